"""Downstream metrics from run_finetune's outputs: linear-probe and weighted-kNN accuracy, plots.

    metrics = evaluate(Path("models/finetune"), EvaluateConfig(), Path("plots/evaluate"))
    metrics["animal_shapes"]["pas"]["knn"]["top1"], metrics["animal_shapes"]["gain"]["linear_top1"]
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pas.config import require
from pas.runtime import pick_device
from pas.shards import atomic_path, load_embeddings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """params.evaluate: kNN settings (DINO's weighted kNN classifier)."""

    knn_k: int = 20
    knn_temperature: float = 0.07

    def validate(self, prefix: str) -> None:
        """Raise a ConfigError naming the first out-of-range value."""
        require(self.knn_k >= 1, f"{prefix}.knn_k", self.knn_k, "use an integer >= 1")
        require(self.knn_temperature > 0, f"{prefix}.knn_temperature", self.knn_temperature, "use a number > 0")


def knn_predict(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, k: int,
                temperature: float, num_classes: int, device: str | None = None, chunk: int = 1024) -> np.ndarray:
    """Weighted kNN class scores (N_test, C): cosine top-k neighbours vote exp(sim / T) for their class."""
    device = device or pick_device()
    train = torch.nn.functional.normalize(torch.as_tensor(train_feats, dtype=torch.float32, device=device), dim=1)
    labels = torch.as_tensor(np.asarray(train_labels, dtype=np.int64), device=device)  # (N_train,)
    k = min(k, len(labels))
    out = []
    for start in range(0, len(test_feats), chunk):
        test = torch.as_tensor(test_feats[start:start + chunk], dtype=torch.float32, device=device)
        sims = torch.nn.functional.normalize(test, dim=1) @ train.T  # (B, N_train)
        top_sims, top_idx = sims.topk(k, dim=1)  # (B, k)
        weights = (top_sims / temperature).exp()
        scores = torch.zeros(len(test), num_classes, device=device)
        scores.scatter_add_(1, labels[top_idx], weights)  # (B, C)
        out.append(scores.cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, num_classes), dtype=np.float32)


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
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(scores).argmax(axis=1)), 1)
    return matrix


def per_class_accuracy(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Top-1 accuracy per class (C,); NaN for a class with no test rows."""
    matrix = confusion_matrix(scores, labels, num_classes)
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / np.maximum(totals, 1), np.nan)


def plot_confusion(matrix: np.ndarray, class_names: list[str], title: str, path: Path) -> None:
    """Row-normalised confusion matrix as a PNG (Agg canvas; no pyplot, no global backend state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = len(class_names)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.3 * count, 20)
    fig = Figure(figsize=(side, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if count <= 40:
        ax.set_xticks(range(count), class_names, rotation=90, fontsize=8)
        ax.set_yticks(range(count), class_names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _accuracies(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"top1": topk_accuracy(scores, labels, 1), "top5": topk_accuracy(scores, labels, 5)}


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def evaluate(finetune_dir: str | Path, cfg: EvaluateConfig, plots_dir: str | Path) -> dict[str, Any]:
    """Linear and kNN accuracy per dataset and init, pas-over-random gains, and confusion PNGs in plots_dir."""
    finetune_dir, plots_dir = Path(finetune_dir), Path(plots_dir)
    index_path = finetune_dir / "index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} not found; run the finetune stage first (dvc repro finetune)")
    index = json.loads(index_path.read_text())
    results: dict[str, Any] = {}
    for dataset, entry in index["datasets"].items():
        names, count = entry["class_names"], entry["num_classes"]
        train_labels = np.load(finetune_dir / entry["train_labels"])
        test_labels = np.load(finetune_dir / entry["test_labels"])
        results[dataset] = {}
        for init, files in entry["inits"].items():
            logits = np.load(finetune_dir / files["test_logits"])
            knn = knn_predict(load_embeddings(finetune_dir / files["train_features"]), train_labels,
                              load_embeddings(finetune_dir / files["test_features"]), cfg.knn_k, cfg.knn_temperature,
                              count)
            per_class = per_class_accuracy(logits, test_labels, count)
            results[dataset][init] = {
                "linear": {**_accuracies(logits, test_labels),
                           "per_class": {name: _json_number(acc) for name, acc in zip(names, per_class)}},
                "knn": _accuracies(knn, test_labels),
            }
            plot_confusion(confusion_matrix(logits, test_labels, count), names,
                           f"{dataset} / {init} (linear probe)", plots_dir / f"confusion_{dataset}_{init}.png")
            log.info("%s %s: linear top1 %.4f, knn top1 %.4f", dataset, init,
                     results[dataset][init]["linear"]["top1"], results[dataset][init]["knn"]["top1"])
        if "pas" in results[dataset] and "random" in results[dataset]:
            pas, random = results[dataset]["pas"], results[dataset]["random"]
            results[dataset]["gain"] = {protocol + "_top1": pas[protocol]["top1"] - random[protocol]["top1"]
                                        for protocol in ("linear", "knn")}
            log.info("%s: pas - random = %s", dataset, results[dataset]["gain"])
    return results
