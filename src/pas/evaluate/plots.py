"""PNG plots of downstream results (Agg canvas, no pyplot state): confusion, learning curves, few-shot, summary."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from pas.core.shards import atomic_path

log = logging.getLogger(__name__)

_FEWSHOT = re.compile(r"^fewshot_(\d+)$")


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def plot_confusion(matrix: np.ndarray, class_names: list[str], title: str, path: Path) -> None:
    """Row-normalised confusion matrix as a PNG."""
    count = len(class_names)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.3 * count, 20)
    fig = _figure(side, side)
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if count <= 40:
        ax.set_xticks(range(count), class_names, rotation=90, fontsize=8)
        ax.set_yticks(range(count), class_names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    _save(fig, path)


def plot_learning_curves(dataset: str, entry: dict[str, Any], path: Path) -> bool:
    """Training loss and train top-1 per epoch, one panel pair per trained result, a line per init."""
    curves: dict[str, dict[str, list[dict[str, float]]]] = {}
    for init, record in entry["inits"].items():
        for name, result in record["results"].items():
            if result["history"] and not _FEWSHOT.match(name):
                curves.setdefault(name, {})[init] = result["history"]
    if not curves:
        return False
    fig = _figure(8, 3 * len(curves))
    for row, (name, by_init) in enumerate(sorted(curves.items())):
        for col, key in enumerate(("loss", "train_top1")):
            ax = fig.add_subplot(len(curves), 2, 2 * row + col + 1)
            for init, history in by_init.items():
                ax.plot([h["epoch"] for h in history], [h[key] for h in history], label=init,
                        marker="o" if len(history) < 10 else None)
            ax.set(xlabel="epoch", ylabel=key, title=f"{dataset}: {name}")
            ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_fewshot(dataset: str, metrics: dict[str, Any], path: Path) -> bool:
    """Few-shot top-1 (mean +- std over seeds) against images per class, a line per init."""
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    drawn, shots = False, set()
    for init, results in metrics.items():
        points = sorted((int(m.group(1)), r) for name, r in results.items() if (m := _FEWSHOT.match(name)))
        if points:
            shots.update(s for s, _ in points)
            ax.errorbar([s for s, _ in points], [r["top1"] for _, r in points],
                        yerr=[r.get("top1_std", 0.0) for _, r in points], marker="o", capsize=3, label=init)
            drawn = True
    if not drawn:
        return False
    ax.set_xscale("log")
    ax.set_xticks(sorted(shots), [str(s) for s in sorted(shots)])
    ax.minorticks_off()
    ax.set(xlabel="training images per class", ylabel="test top-1", title=f"{dataset}: few-shot linear probe")
    ax.legend()
    _save(fig, path)
    return True


def plot_summary(dataset: str, metrics: dict[str, Any], path: Path) -> None:
    """Grouped bars: test top-1 per result (x) and init (colour)."""
    inits = list(metrics)
    names = sorted({name for results in metrics.values() for name in results},
                   key=lambda n: (n.startswith("fewshot"), int(n.split("_")[1]) if _FEWSHOT.match(n) else 0, n))
    fig = _figure(max(6, 0.9 * len(names) * max(1, len(inits)) / 2), 4)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(inits))
    for i, init in enumerate(inits):
        values = [metrics[init].get(name, {}).get("top1", np.nan) for name in names]
        errors = [metrics[init].get(name, {}).get("top1_std", 0.0) for name in names]
        ax.bar(np.arange(len(names)) + (i - (len(inits) - 1) / 2) * width, values, width, yerr=errors, label=init,
               capsize=2)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set(ylabel="test top-1", ylim=(0, 1), title=f"{dataset}: top-1 per protocol and init")
    ax.legend()
    _save(fig, path)


def plot_dataset(dataset: str, entry: dict[str, Any], metrics: dict[str, Any], plots_dir: Path) -> list[Path]:
    """Every per-dataset plot but the confusion matrices; return the files written."""
    written = []
    if plot_learning_curves(dataset, entry, plots_dir / f"curves_{dataset}.png"):
        written.append(plots_dir / f"curves_{dataset}.png")
    if plot_fewshot(dataset, metrics, plots_dir / f"fewshot_{dataset}.png"):
        written.append(plots_dir / f"fewshot_{dataset}.png")
    plot_summary(dataset, metrics, plots_dir / f"summary_{dataset}.png")
    return [*written, plots_dir / f"summary_{dataset}.png"]
