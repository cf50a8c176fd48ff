"""Downstream parquet loading, feature extraction, linear probe and run_finetune on a tiny timm model."""
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

from pas.config import ConfigError, build
from pas.downstream import DownstreamDataError, iter_image_batches, load_split, read_split_info
from pas.finetune import FinetuneConfig, extract_features, run_finetune, train_linear_probe

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
    monkeypatch.setenv("PAS_DEVICE", "cpu")


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
    with caplog.at_level(logging.WARNING, logger="pas.downstream"):
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


def _blobs(rng, per_class: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(len(centres)), per_class)
    feats = centres[labels] + 0.3 * rng.normal(size=(len(labels), centres.shape[1]))
    return (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32), labels


def test_linear_probe_learns_separable_features_deterministically():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    train_x, train_y = _blobs(rng, 50, centres)
    test_x, test_y = _blobs(rng, 25, centres)
    cfg = FinetuneConfig(probe_epochs=30, batch_size=64)
    weight, bias, history = train_linear_probe(train_x, train_y, 4, cfg, seed=0, device="cpu")
    assert weight.shape == (4, 16) and bias.shape == (4,)
    assert len(history) == 30 and history[-1]["loss"] < history[0]["loss"]
    assert ((train_x @ weight.T + bias).argmax(1) == train_y).mean() >= 0.98
    assert ((test_x @ weight.T + bias).argmax(1) == test_y).mean() >= 0.95
    again, _, _ = train_linear_probe(train_x, train_y, 4, cfg, seed=0, device="cpu")
    np.testing.assert_array_equal(weight, again)


def test_linear_probe_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels must lie in 0..1"):
        train_linear_probe(np.ones((3, 4), np.float32), np.array([0, 1, 2]), 2, FinetuneConfig(), seed=0, device="cpu")


def test_config_is_validated_by_key():
    assert build(FinetuneConfig, {}, "finetune") == FinetuneConfig()
    with pytest.raises(ConfigError, match=r"finetune.probe_lr=0"):
        build(FinetuneConfig, {"probe_lr": 0}, "finetune")
    with pytest.raises(ConfigError, match="unknown key finetune.epochs"):
        build(FinetuneConfig, {"epochs": 3}, "finetune")


def test_run_finetune_writes_features_probe_logits_and_index(tmp_path):
    data = tmp_path / "downstream" / "shapes"
    write_split(data / "train.parquet", per_class=8, seed=0, bad_rows={5: b"\x89PNG broken"})
    write_split(data / "test.parquet", per_class=4, seed=1)
    torch.manual_seed(1)
    weights = tmp_path / "pretrain" / "backbone.safetensors"
    weights.parent.mkdir()
    safetensors.torch.save_file(timm.create_model(TINY, pretrained=False, num_classes=0).state_dict(), weights)
    cfg = FinetuneConfig(image_size=32, batch_size=64, probe_epochs=20)
    out = tmp_path / "finetune"
    metrics = run_finetune({"shapes": data}, TINY, {"pas": weights, "random": None}, cfg, out, seed=0)

    index = json.loads((out / "index.json").read_text())
    entry = index["datasets"]["shapes"]
    assert entry["class_names"] == list(CLASSES) and entry["num_classes"] == 3
    assert entry["train"] == {"rows": 24, "images": 23, "skipped": 1} and entry["test"]["skipped"] == 0
    assert index["inits"]["random"] is None and len(index["inits"]["pas"]["sha256"]) == 64
    assert np.load(out / entry["train_labels"]).shape == (23,)
    feats = {}
    for init in ("pas", "random"):
        files = entry["inits"][init]
        feats[init] = np.load(out / files["train_features"])
        assert feats[init].dtype == np.float16 and feats[init].shape == (23, 512)
        assert np.load(out / files["test_logits"]).shape == (12, 3)
        assert (out / files["probe"]).is_file() and len(files["history"]) == 20
        assert metrics["shapes"][init]["skipped_images"] == 1
        assert 0.0 <= metrics["shapes"][init]["probe_train_top1"] <= 1.0
    assert not np.allclose(feats["pas"], feats["random"])  # the pas weights were loaded
    assert not list(out.rglob(".*tmp-*"))  # every write was atomic


def test_run_finetune_rejects_missing_or_mismatched_weights(tmp_path):
    data = tmp_path / "shapes"
    write_split(data / "train.parquet", per_class=2, seed=0)
    write_split(data / "test.parquet", per_class=1, seed=1)
    cfg = FinetuneConfig(image_size=32, probe_epochs=1)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        run_finetune({"shapes": data}, TINY, {"pas": tmp_path / "nope.safetensors"}, cfg, tmp_path / "out", seed=0)
    wrong = tmp_path / "wrong.safetensors"
    safetensors.torch.save_file({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(RuntimeError, match="does not fit timm backbone 'resnet10t'"):
        run_finetune({"shapes": data}, TINY, {"pas": wrong}, cfg, tmp_path / "out", seed=0)
    with pytest.raises(ValueError, match="init name 'gain'"):
        run_finetune({"shapes": data}, TINY, {"gain": None}, cfg, tmp_path / "out", seed=0)
