"""kNN, top-k and per-class accuracy by hand, and run_finetune -> evaluate end to end on a tiny timm model."""
from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

from pas.config import ConfigError, build
from pas.evaluate import EvaluateConfig, evaluate, knn_predict, per_class_accuracy, topk_accuracy
from pas.finetune import FinetuneConfig, run_finetune

CLASSES = ("red", "green", "blue")
TINY = "resnet10t"


def test_knn_predict_matches_hand_computed_votes():
    train = np.array([[1.0, 0.0], [0.0, 2.0], [0.6, 0.8], [-1.0, 0.0]])  # row 1 is not unit length
    labels = np.array([0, 1, 1, 2])
    test = np.array([[2.0, 0.0], [0.0, 1.0]])
    scores = knn_predict(train, labels, test, k=2, temperature=0.5, num_classes=3, device="cpu")
    # test 0: sims 1, 0, 0.6, -1 -> neighbours 0 (class 0, sim 1) and 2 (class 1, sim 0.6)
    # test 1: sims 0, 1, 0.8, 0  -> neighbours 1 and 2, both class 1
    expected = np.array([[math.exp(2.0), math.exp(1.2), 0.0], [0.0, math.exp(2.0) + math.exp(1.6), 0.0]])
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    chunked = knn_predict(train, labels, test, k=2, temperature=0.5, num_classes=3, device="cpu", chunk=1)
    np.testing.assert_allclose(chunked, scores, rtol=1e-6)


def test_knn_predict_caps_k_at_the_training_set_size():
    scores = knn_predict(np.eye(2), np.array([0, 1]), np.array([[1.0, 0.0]]), k=20, temperature=1.0,
                         num_classes=2, device="cpu")
    np.testing.assert_allclose(scores, [[math.e, 1.0]], rtol=1e-5)


def test_topk_and_per_class_accuracy():
    scores = np.array([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = np.array([2, 0, 1, 0])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(0.5)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(1.0)
    assert topk_accuracy(scores, labels, 5) == 1.0  # k capped at the number of classes
    per_class = per_class_accuracy(scores, labels, 4)
    np.testing.assert_allclose(per_class[:3], [1.0, 0.0, 0.0])
    assert math.isnan(per_class[3])  # no test rows of class 3


def test_config_is_validated_by_key():
    assert build(EvaluateConfig, {}, "evaluate") == EvaluateConfig(knn_k=20, knn_temperature=0.07)
    with pytest.raises(ConfigError, match=r"evaluate.knn_k=0"):
        build(EvaluateConfig, {"knn_k": 0}, "evaluate")
    with pytest.raises(ConfigError, match=r"evaluate.knn_temperature"):
        build(EvaluateConfig, {"knn_temperature": -1.0}, "evaluate")


def _write_split(path, per_class: int, seed: int) -> None:
    """Solid-colour squares with noise: class = colour channel."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(3), per_class))
    images = []
    for label in labels:
        pixels = rng.integers(0, 60, size=(32, 32, 3), dtype=np.uint8)
        pixels[8:24, 8:24, label] = 230
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "label": pa.array(labels, pa.int64()),
                             "label_name": pa.array([CLASSES[i] for i in labels], pa.string())}), path)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """run_finetune over two datasets and two inits (pas = another random resnet10t), tiny sizes."""
    root = tmp_path_factory.mktemp("e2e")
    datasets = {}
    for i, name in enumerate(("colours", "colours_b")):
        datasets[name] = root / "downstream" / name
        _write_split(datasets[name] / "train.parquet", per_class=10, seed=2 * i)
        _write_split(datasets[name] / "test.parquet", per_class=5, seed=2 * i + 1)
    with torch.random.fork_rng():
        torch.manual_seed(123)
        weights = root / "backbone.safetensors"
        safetensors.torch.save_file(timm.create_model(TINY, pretrained=False, num_classes=0).state_dict(), weights)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAS_DEVICE", "cpu")
        cfg = FinetuneConfig(image_size=32, batch_size=64, probe_epochs=30)
        run_finetune(datasets, TINY, {"pas": weights, "random": None}, cfg, root / "finetune", seed=0)
        metrics = evaluate(root / "finetune", EvaluateConfig(knn_k=5), root / "plots")
    return root, metrics


def test_evaluate_reports_every_dataset_and_init_with_the_documented_structure(finetuned):
    _, metrics = finetuned
    assert set(metrics) == {"colours", "colours_b"}
    for dataset in metrics.values():
        assert set(dataset) == {"pas", "random", "gain"}
        for init in ("pas", "random"):
            linear, knn = dataset[init]["linear"], dataset[init]["knn"]
            assert set(linear) == {"top1", "top5", "per_class"} and set(knn) == {"top1", "top5"}
            assert list(linear["per_class"]) == list(CLASSES)
            for value in (linear["top1"], linear["top5"], knn["top1"], knn["top5"], *linear["per_class"].values()):
                assert 0.0 <= value <= 1.0
            assert linear["top5"] == knn["top5"] == 1.0  # only 3 classes
            assert linear["top1"] == pytest.approx(np.mean(list(linear["per_class"].values())))  # balanced test set
        for protocol in ("linear", "knn"):
            gain = dataset["pas"][protocol]["top1"] - dataset["random"][protocol]["top1"]
            assert dataset["gain"][f"{protocol}_top1"] == pytest.approx(gain)


def test_colour_classes_are_learned_from_frozen_random_features(finetuned):
    _, metrics = finetuned
    assert metrics["colours"]["random"]["linear"]["top1"] >= 0.8
    assert metrics["colours"]["random"]["knn"]["top1"] >= 0.8


def test_evaluate_writes_a_confusion_png_per_dataset_and_init(finetuned):
    root, _ = finetuned
    for dataset in ("colours", "colours_b"):
        for init in ("pas", "random"):
            path = root / "plots" / f"confusion_{dataset}_{init}.png"
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            with Image.open(path) as image:
                assert min(image.size) >= 300


def test_evaluate_without_finetune_outputs_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the finetune stage"):
        evaluate(tmp_path, EvaluateConfig(), tmp_path / "plots")
