"""kNN, top-k, per-class, several-seed metrics and gains by hand; run_finetune -> evaluate -> report end to end."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

from pas.core.config import ConfigError, build
from pas.evaluate.eval_md import render_eval_md
from pas.evaluate.metrics import (
    EvaluateConfig,
    elfis_gains,
    evaluate,
    gains,
    per_class_accuracy,
    result_metrics,
    topk_accuracy,
)
from pas.transfer.config import ElfisConfig, FewshotConfig, FinetuneConfig, InitSpec, LinearConfig
from pas.transfer.finetune import read_finetune_index, run_finetune
from pas.transfer.probe import knn_predict, torch_threads

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


def test_several_runs_report_mean_and_std():
    labels = np.array([0, 1])
    right, wrong = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 1.0], [0.0, 1.0]])
    single = result_metrics([right], labels, ["a", "b"])
    assert single == {"top1": 1.0, "top5": 1.0, "per_class": {"a": 1.0, "b": 1.0}}
    both = result_metrics([right, wrong], labels, ["a", "b"])
    assert both["top1"] == pytest.approx(0.75) and both["top1_std"] == pytest.approx(0.25) and both["runs"] == 2
    assert both["per_class"] == {"a": 0.5, "b": 1.0}


def test_gains_are_reference_minus_each_baseline_and_elfis_minus_plain():
    metrics = {"pas": {"linear": {"top1": 0.7}, "linear_elfis": {"top1": 0.75}, "knn": {"top1": 0.6}},
               "random": {"linear": {"top1": 0.5}, "knn": {"top1": 0.65}},
               "imagenet": {"linear": {"top1": 0.9}}}
    assert gains(metrics, "pas") == {"random": {"linear": pytest.approx(0.2), "knn": pytest.approx(-0.05)},
                                     "imagenet": {"linear": pytest.approx(-0.2)}}
    assert elfis_gains(metrics) == {"pas": {"linear": pytest.approx(0.05)}}


def test_config_is_validated_by_key():
    assert build(EvaluateConfig, {}, "evaluate") == EvaluateConfig(reference="pas", confusion=("linear", "full"))
    with pytest.raises(ConfigError, match=r"evaluate.reference=''"):
        build(EvaluateConfig, {"reference": ""}, "evaluate")
    with pytest.raises(ConfigError, match="unknown key evaluate.knn_k"):
        build(EvaluateConfig, {"knn_k": 3}, "evaluate")


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
        (root / "pretrain").mkdir()
        safetensors.torch.save_file(timm.create_model(TINY, pretrained=False, num_classes=0).state_dict(),
                                    root / "pretrain" / "backbone.safetensors")
    cfg = FinetuneConfig(image_size=32, batch_size=64, protocols=("linear", "knn", "fewshot"),
                         linear=LinearConfig(epochs=30, batch_size=64), fewshot=FewshotConfig(shots=(1, 3), seeds=2),
                         elfis=ElfisConfig(protocols=("linear",), groups=2, folds=2),
                         inits=(InitSpec("pas", "pretrain", "pretrain"), InitSpec("random", "pretrain", "random")))
    with pytest.MonkeyPatch.context() as patch, torch_threads(1):
        patch.setenv("PAS_DEVICE", "cpu")
        run_finetune(datasets, TINY, root / "pretrain", cfg, root / "finetune", seed=0)
        metrics = evaluate(root / "finetune", EvaluateConfig(confusion=("linear",)), root / "plots")
    return root, metrics


def test_evaluate_reports_every_dataset_init_and_result_with_the_documented_structure(finetuned):
    _, metrics = finetuned
    assert set(metrics) == {"colours", "colours_b", "summary"}
    for dataset in ("colours", "colours_b"):
        assert set(metrics[dataset]) == {"pas", "random", "gain", "elfis_gain"}
        for init in ("pas", "random"):
            results = metrics[dataset][init]
            assert set(results) == {"linear", "linear_elfis", "knn", "fewshot_1", "fewshot_3"}
            for name, result in results.items():
                assert list(result["per_class"]) == list(CLASSES)
                for value in (result["top1"], result["top5"], *result["per_class"].values()):
                    assert 0.0 <= value <= 1.0
                assert result["top5"] == 1.0  # only 3 classes
                assert ("top1_std" in result) == name.startswith("fewshot")
            assert results["linear"]["top1"] == pytest.approx(np.mean(list(results["linear"]["per_class"].values())))
        for name in ("linear", "knn", "fewshot_1"):
            gain = metrics[dataset]["pas"][name]["top1"] - metrics[dataset]["random"][name]["top1"]
            assert metrics[dataset]["gain"]["random"][name] == pytest.approx(gain)
    summary = metrics["summary"]
    assert summary["reference"] == "pas" and summary["datasets"] == 2
    assert summary["gain"]["random"]["linear"] == pytest.approx(
        np.mean([metrics[d]["gain"]["random"]["linear"] for d in ("colours", "colours_b")]))


def test_colour_classes_are_learned_from_frozen_random_features(finetuned):
    _, metrics = finetuned
    assert metrics["colours"]["random"]["linear"]["top1"] >= 0.8
    assert metrics["colours"]["random"]["knn"]["top1"] >= 0.8
    assert metrics["colours"]["random"]["fewshot_3"]["top1"] >= metrics["colours"]["random"]["fewshot_1"]["top1"] - 0.1


def test_evaluate_writes_confusion_curve_fewshot_and_summary_pngs(finetuned):
    root, _ = finetuned
    expected = [f"confusion_{d}_{i}_linear.png" for d in ("colours", "colours_b") for i in ("pas", "random")]
    expected += [f"{kind}_{d}.png" for kind in ("curves", "fewshot", "summary") for d in ("colours", "colours_b")]
    assert sorted(p.name for p in (root / "plots").iterdir()) == sorted(expected)
    for name in expected:
        path = root / "plots" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            assert min(image.size) >= 300


def test_report_lists_results_gains_and_meta_categories(finetuned):
    root, metrics = finetuned
    index = read_finetune_index(root / "finetune")
    report = render_eval_md(metrics, index, "pas", {"size": "2k"})
    assert "Experiment: size = 2k" in report
    assert "| result | pas | random | pas − random |" in report
    linear = metrics["colours"]["pas"]["linear"]["top1"]
    assert f"| linear | {100 * linear:.1f} |" in report
    assert "### ELFIS on colours" in report
    for group in index["datasets"]["colours"]["inits"]["pas"]["meta_categories"]:
        assert ", ".join(group) in report
    assert "over **random**:" in report
    rows = [line.split(" | ")[0] for line in report.splitlines() if line.startswith("| ") and "top" not in line]
    assert rows.index("| linear") < rows.index("| linear_elfis") < rows.index("| knn") < rows.index("| fewshot_1")


def test_evaluate_rejects_an_unknown_reference(finetuned, tmp_path):
    root, _ = finetuned
    with pytest.raises(ValueError, match="evaluate.reference='imagenet' is not an init of this run"):
        evaluate(root / "finetune", EvaluateConfig(reference="imagenet"), tmp_path)
    index = json.loads((root / "finetune" / "index.json").read_text())
    assert set(index["inits"]) == {"pas", "random"}


def test_evaluate_without_finetune_outputs_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the finetune stage"):
        evaluate(tmp_path, EvaluateConfig(), tmp_path / "plots")
