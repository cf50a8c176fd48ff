"""Downstream metrics from run_finetune's outputs: top-1/top-5/per-class per result, gains, plots.

    metrics = evaluate(Path("data/finetune"), EvaluateConfig(), Path("plots"))
    metrics["animal_shapes"]["pas"]["linear"]["top1"]          # one run
    metrics["animal_shapes"]["imagenet"]["fewshot_5"]["top1_std"]  # several seeds: mean and std
    metrics["animal_shapes"]["gain"]["random"]["full"]            # reference (pas) minus that baseline
    metrics["summary"]["gain"]["imagenet"]["linear"]              # mean over datasets
"""
from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pas.core.config import require
from pas.evaluate.honesty import check_architectures, concept_overlap
from pas.transfer.index import read_finetune_index

log = logging.getLogger(__name__)

SUMMARY = "summary"  # top-level key of the metrics beside the datasets
GAIN = "gain"
ELFIS_GAIN = "elfis_gain"


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """params.evaluate: which init the gains are reported for, and which results get confusion PNGs."""

    reference: str = "pas"  # gain = reference top-1 minus each other init's, per result
    confusion: tuple[str, ...] = ("linear", "full")
    allow_mixed_arch: bool = False  # report gains across architectures (marked as confounded) instead of refusing

    def validate(self, prefix: str) -> None:
        """Raise a ConfigError naming the first bad value."""
        require(bool(self.reference), f"{prefix}.reference", self.reference, "name an init of finetune.inits")


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores (k is capped at the class count)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # ties go to the lower class index
    return float((top == labels[:, None]).any(axis=1).mean())


def confusion_matrix(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (C, C): row = true class, column = predicted (argmax) class."""
    from sklearn.metrics import confusion_matrix as sklearn_confusion   # scipy + pandas: only when evaluating

    return sklearn_confusion(np.asarray(labels), np.asarray(scores).argmax(axis=1),
                             labels=np.arange(num_classes)).astype(np.int64)


def per_class_accuracy(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Top-1 accuracy per class (C,); NaN for a class with no test rows."""
    matrix = confusion_matrix(scores, labels, num_classes)
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / np.maximum(totals, 1), np.nan)


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def result_metrics(runs: list[np.ndarray], labels: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """top1, top5 and per-class top-1 of one result; with several runs: their mean, plus std and runs."""
    count = len(class_names)
    top1 = [topk_accuracy(scores, labels, 1) for scores in runs]
    top5 = [topk_accuracy(scores, labels, 5) for scores in runs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class with no test rows is NaN in every run
        per_class = np.nanmean([per_class_accuracy(scores, labels, count) for scores in runs], axis=0)
    out: dict[str, Any] = {"top1": float(np.mean(top1)), "top5": float(np.mean(top5))}
    if len(runs) > 1:
        out.update(top1_std=float(np.std(top1)), top5_std=float(np.std(top5)), runs=len(runs))
    out["per_class"] = {name: _json_number(acc) for name, acc in zip(class_names, per_class)}
    return out


def gains(dataset_metrics: dict[str, Any], reference: str) -> dict[str, dict[str, float]]:
    """Top-1 of `reference` minus each other init's, for every result both have."""
    ref = dataset_metrics[reference]
    return {init: {name: ref[name]["top1"] - results[name]["top1"] for name in ref if name in results}
            for init, results in dataset_metrics.items() if init != reference}


def elfis_gains(dataset_metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per init: ELFIS top-1 minus the plain head's, for each protocol that trained both."""
    out = {}
    for init, results in dataset_metrics.items():
        pairs = {name[: -len("_elfis")]: name for name in results if name.endswith("_elfis")}
        found = {plain: results[elfis]["top1"] - results[plain]["top1"] for plain, elfis in pairs.items()
                 if plain in results}
        if found:
            out[init] = found
    return out


def evaluate(finetune_dir: str | Path, cfg: EvaluateConfig, plots_dir: str | Path,
             concepts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Metrics per dataset, init and result; gains of cfg.reference; confusion, curve and summary PNGs.

    Gains across architectures are refused (or, with cfg.allow_mixed_arch, listed under summary.mixed_architecture);
    with `concepts` (concepts.json's list) each dataset's class names are compared with the concept names."""
    from pas.evaluate.plots import plot_confusion, plot_dataset

    finetune_dir, plots_dir = Path(finetune_dir), Path(plots_dir)
    index = read_finetune_index(finetune_dir)
    if cfg.reference not in index["inits"]:
        raise ValueError(f"evaluate.reference={cfg.reference!r} is not an init of this run; "
                         f"inits: {', '.join(index['inits'])}")
    mixed = check_architectures({name: init["arch"] for name, init in index["inits"].items()}, cfg.reference,
                                cfg.allow_mixed_arch)
    results: dict[str, Any] = {}
    overlaps: dict[str, Any] = {}
    for dataset, entry in index["datasets"].items():
        if "skipped" in entry:
            log.warning("%s was skipped by finetune: %s", dataset, entry["skipped"])
            continue
        names, labels = entry["class_names"], np.load(finetune_dir / entry["test_labels"])
        if concepts is not None:
            overlaps[dataset] = concept_overlap(concepts, names)
        results[dataset] = {}
        for init, record in entry["inits"].items():
            results[dataset][init] = {}
            for name, result in record["results"].items():
                runs = [np.load(finetune_dir / path) for path in result["scores"]]
                results[dataset][init][name] = result_metrics(runs, labels, names)
                if name in cfg.confusion:
                    plot_confusion(confusion_matrix(runs[0], labels, len(names)), names, f"{dataset} / {init} ({name})",
                                   plots_dir / f"confusion_{dataset}_{init}_{name}.png")
            log.info("%s %s: %s", dataset, init, {n: round(m["top1"], 4) for n, m in results[dataset][init].items()})
        plot_dataset(dataset, entry, results[dataset], plots_dir)
        inits = dict(results[dataset])
        results[dataset][GAIN] = gains(inits, cfg.reference)
        if elfis := elfis_gains(inits):
            results[dataset][ELFIS_GAIN] = elfis
        log.info("%s: %s minus each baseline = %s", dataset, cfg.reference, results[dataset][GAIN])
    results[SUMMARY] = summarise(results, cfg.reference)
    results[SUMMARY]["architectures"] = {name: init["arch"] for name, init in index["inits"].items()}
    if mixed:   # only with allow_mixed_arch: these gains mix architecture with data
        results[SUMMARY]["mixed_architecture"] = mixed
    if overlaps:
        results[SUMMARY]["concept_overlap"] = overlaps
        results[SUMMARY]["oracle_concepts"] = any(o["oracle"] for o in overlaps.values())
    score = index["inits"][cfg.reference]["source"].get("label_free_score")
    if score is not None:  # carried from the model card, so a restored pretrain stage still reports it
        results[SUMMARY]["label_free_score"] = score
    return results


def summarise(results: dict[str, Any], reference: str) -> dict[str, Any]:
    """Mean over datasets of the reference's gain over each baseline, per result."""
    per_baseline: dict[str, dict[str, list[float]]] = {}
    for dataset, metrics in results.items():
        if dataset == SUMMARY:
            continue
        for baseline, by_result in metrics[GAIN].items():
            for name, value in by_result.items():
                per_baseline.setdefault(baseline, {}).setdefault(name, []).append(value)
    return {"reference": reference, "datasets": len([d for d in results if d != SUMMARY]),
            GAIN: {b: {n: float(np.mean(v)) for n, v in r.items()} for b, r in per_baseline.items()}}
