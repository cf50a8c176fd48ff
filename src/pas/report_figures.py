"""The dataset report's PNG figures (matplotlib, Agg canvas, no pyplot state)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pas.shards import atomic_path

COLORS = {"generated": "#4c72b0", "retrieved": "#dd8452", "kept": "#55a868", "rejected": "#c44e52"}


@dataclass(frozen=True)
class Panel:
    """One histogram: values per series, the threshold line and its meaning."""

    title: str
    series: Mapping[str, np.ndarray]
    threshold: float | None
    xlabel: str


@dataclass(frozen=True)
class Tile:
    """One image in a grid, with a caption; `mark` draws a green frame (the member that was kept)."""

    image: Image.Image
    caption: str = ""
    mark: bool = False


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def concept_counts(counts: Mapping[str, Mapping[str, int]], path: Path) -> Path:
    """Stacked bars: curated images per concept, split by source."""
    concepts = list(counts)
    sources = sorted({s for c in counts.values() for s in c})
    fig = _figure(max(5.0, 0.45 * len(concepts) + 2), 3.6)
    ax = fig.add_subplot()
    bottom = np.zeros(len(concepts))
    for source in sources:
        values = np.array([counts[c].get(source, 0) for c in concepts], float)
        ax.bar(concepts, values, bottom=bottom, label=source, color=COLORS.get(source))
        bottom += values
    ax.set_ylabel("curated images")
    ax.set_title("images per concept")
    ax.tick_params(axis="x", rotation=60, labelsize=8)
    ax.legend(fontsize=8)
    return _save(fig, path)


def funnel(stages: Sequence[tuple[str, str, int]], path: Path) -> Path:
    """Horizontal bars: every candidate's fate as (step, reason, count), e.g. ('filter', 'too_small', 122)."""
    fig = _figure(6.5, 0.35 * len(stages) + 1.2)
    ax = fig.add_subplot()
    labels = [f"{step}: {reason}" for step, reason, _ in stages]
    values = [n for _, _, n in stages]
    colors = [COLORS["kept"] if reason == "curated" else COLORS["rejected"] for _, reason, _ in stages]
    ax.barh(labels[::-1], values[::-1], color=colors[::-1])
    for y, v in enumerate(values[::-1]):
        ax.text(v, y, f" {v}", va="center", fontsize=8)
    ax.set_xlabel("candidates")
    ax.set_title(f"where the {sum(values)} candidates went")
    return _save(fig, path)


def histograms(panels: Sequence[Panel], path: Path) -> Path:
    """One histogram per panel, series overlaid, the threshold as a dashed line."""
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure(4.2 * cols, 3.0 * rows)
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        values = [v[np.isfinite(v)] for v in panel.series.values()]
        finite = np.concatenate(values) if values else np.zeros(0)
        bins = np.linspace(finite.min(), finite.max() + 1e-6, 30) if len(finite) else 10
        for (name, _), v in zip(panel.series.items(), values):
            ax.hist(v, bins=bins, alpha=0.6, label=f"{name} ({len(v)})", color=COLORS.get(name))
        if panel.threshold is not None:
            ax.axvline(panel.threshold, color="black", linestyle="--", label=f"threshold {panel.threshold:g}")
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel, fontsize=8)
        ax.legend(fontsize=7)
    return _save(fig, path)


def image_rows(rows: Sequence[tuple[str, Sequence[Tile]]], path: Path, thumb: float = 0.85) -> Path:
    """A grid of images: one labelled row per entry (a duplicate group, a source, a concept)."""
    width = max((len(tiles) for _, tiles in rows), default=1)
    fig = _figure(thumb * width + 1.6, thumb * 1.25 * max(len(rows), 1))
    for r, (label, tiles) in enumerate(rows):
        for c in range(width):
            ax = fig.add_subplot(len(rows), width, r * width + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
            if c >= len(tiles):
                for spine in ax.spines.values():
                    spine.set_visible(False)
                continue
            ax.imshow(np.asarray(tiles[c].image.convert("RGB")), interpolation="nearest")
            ax.set_xlabel(tiles[c].caption, fontsize=6)
            for spine in ax.spines.values():
                spine.set_edgecolor("#2ca02c" if tiles[c].mark else "#999999")
                spine.set_linewidth(3 if tiles[c].mark else 0.5)
    return _save(fig, path)


def diversity_bars(table: Mapping[str, Mapping[str, Mapping[str, Any]]], path: Path) -> Path:
    """Vendi score and mean pairwise cosine distance per group (overall first), one bar per dataset variant."""
    variants = list(table)  # e.g. candidates, curated
    groups = list(next(iter(table.values())))
    fig = _figure(max(6.0, 0.5 * len(groups) * len(variants) + 2), 6.0)
    for k, (metric, title) in enumerate((("vendi", "Vendi score (effective number of distinct images)"),
                                         ("mean_cosine_distance", "mean pairwise cosine distance"))):
        ax = fig.add_subplot(2, 1, k + 1)
        width = 0.8 / len(variants)
        for v, variant in enumerate(variants):
            values = [table[variant].get(g, {}).get(metric) or 0.0 for g in groups]
            ax.bar(np.arange(len(groups)) + v * width, values, width, label=variant)
        ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, rotation=60, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    return _save(fig, path)
