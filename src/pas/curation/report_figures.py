"""The dataset report's PNG figures (matplotlib, Agg canvas, no pyplot state)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pas.core.shards import atomic_path

COLORS = {"generated": "#4c72b0", "retrieved": "#dd8452", "kept": "#55a868", "rejected": "#c44e52",
          "curated": "#55a868", "trimmed": "#999999"}


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


MAX_BARS = 40   # a figure stays readable in the report's 1100 px; a bank of 400 concepts shows its extremes


def extremes(names: list[str], value: Mapping[str, float], limit: int = MAX_BARS) -> tuple[list[str], str]:
    """All names, or the limit/2 highest and limit/2 lowest by value once there are more, and a title note."""
    if len(names) <= limit:
        return names, ""
    ranked = sorted(names, key=lambda n: (-value[n], n))
    return ranked[: limit // 2] + ranked[-(limit // 2):], f" (the {limit // 2} highest and lowest of {len(names)})"


def concept_counts(counts: Mapping[str, Mapping[str, int]], path: Path) -> Path:
    """Stacked bars: curated images per concept, split by source (the extremes of a large bank)."""
    concepts, note = extremes(list(counts), {c: sum(v.values()) for c, v in counts.items()})
    sources = sorted({s for c in counts.values() for s in c})
    fig = _figure(max(5.0, 0.45 * len(concepts) + 2), 3.6)
    ax = fig.add_subplot()
    bottom = np.zeros(len(concepts))
    for source in sources:
        values = np.array([counts[c].get(source, 0) for c in concepts], float)
        ax.bar(concepts, values, bottom=bottom, label=source, color=COLORS.get(source))
        bottom += values
    ax.set_ylabel("curated images")
    ax.set_title(f"images per concept{note}")
    ax.tick_params(axis="x", rotation=60, labelsize=8)
    ax.legend(fontsize=8)
    return _save(fig, path)


def funnel(stages: Sequence[tuple[str, str, int]], path: Path) -> Path:
    """Horizontal bars: every candidate's fate as (step, reason, count), e.g. ('filter', 'too_small', 122)."""
    fig = _figure(6.5, 0.35 * len(stages) + 1.2)
    ax = fig.add_subplot()
    labels = [f"{step}: {reason}" for step, reason, _ in stages]
    values = [n for _, _, n in stages]
    colors = [COLORS.get(reason, COLORS["rejected"]) for _, reason, _ in stages]
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


def image_rows(rows: Sequence[tuple[str, Sequence[Tile]]], path: Path, tile: int = 72) -> Path:
    """A grid of images: one labelled row per entry (a duplicate group, a source, a concept), drawn as one mosaic."""
    width = max((len(tiles) for _, tiles in rows), default=1) or 1
    pad, caption = 6, 14
    cell_w, cell_h = tile + 2 * pad, tile + 2 * pad + caption
    mosaic = np.full((cell_h * max(len(rows), 1), cell_w * width, 3), 255, np.uint8)
    texts = []
    for r, (label, tiles) in enumerate(rows):
        for c, item in enumerate(tiles):
            y, x = r * cell_h + pad, c * cell_w + pad
            if item.mark:
                mosaic[y - 4 : y + tile + 4, x - 4 : x + tile + 4] = (44, 160, 44)
            thumb = item.image.convert("RGB").resize((tile, tile), Image.NEAREST)
            mosaic[y : y + tile, x : x + tile] = np.asarray(thumb)
            texts.append((x + tile / 2, y + tile + pad + 2, item.caption))
    dpi = 100
    fig = _figure(mosaic.shape[1] / dpi + 1.6, mosaic.shape[0] / dpi + 0.1)
    ax = fig.add_axes((1.6 / (mosaic.shape[1] / dpi + 1.6), 0, 1 - 1.6 / (mosaic.shape[1] / dpi + 1.6), 1))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for x, y, text in texts:
        ax.text(x, y, text, ha="center", va="top", fontsize=6)
    for r, (label, _) in enumerate(rows):
        ax.text(-8, r * cell_h + pad + tile / 2, label, ha="right", va="center", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def diversity_bars(table: Mapping[str, Mapping[str, Mapping[str, Any]]], path: Path) -> Path:
    """Vendi score and mean pairwise cosine distance per group (overall first, then the extremes of a large bank by
    the last variant's Vendi score), one bar per dataset variant."""
    variants = list(table)  # e.g. candidates, curated
    groups = list(next(iter(table.values())))
    last = table[variants[-1]]
    head, rest = groups[:1], groups[1:]
    shown, note = extremes(rest, {g: last.get(g, {}).get("vendi") or 0.0 for g in rest}, MAX_BARS - 1)
    groups = head + shown
    fig = _figure(max(6.0, 0.5 * len(groups) * len(variants) + 2), 6.0)
    for k, (metric, title) in enumerate((("vendi", "Vendi score (effective number of distinct images)"),
                                         ("mean_cosine_distance", "mean pairwise cosine distance"))):
        ax = fig.add_subplot(2, 1, k + 1)
        width = 0.8 / len(variants)
        for v, variant in enumerate(variants):
            values = [table[variant].get(g, {}).get(metric) or 0.0 for g in groups]
            ax.bar(np.arange(len(groups)) + v * width, values, width, label=variant)
        ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, rotation=60, fontsize=8)
        ax.set_title(title + note, fontsize=10)
        ax.legend(fontsize=8)
    return _save(fig, path)


def group_sizes(before: Mapping[str, int], after: Mapping[str, int], kind: str, path: Path) -> Path:
    """Rank-size lines: images per group (cluster or concept) before balancing and after it, largest group first,
    on a log scale, with the even share as a dashed line: a long tail before, a flat line after, at a glance."""
    order = sorted(before, key=lambda g: (-before[g], str(g)))
    rank = np.arange(1, len(order) + 1)
    fig = _figure(6.5, 3.6)
    ax = fig.add_subplot()
    marker = "o" if len(order) <= 60 else None
    ax.plot(rank, [max(before[g], 0.8) for g in order], color=COLORS["trimmed"], marker=marker, markersize=3,
            label=f"before balancing ({sum(before.values())} images)")
    ax.plot(rank, [max(after.get(g, 0), 0.8) for g in order], color=COLORS["curated"], marker=marker, markersize=3,
            label=f"curated ({sum(after.values())} images)")
    if order:
        ax.axhline(sum(after.values()) / len(order), color="black", linestyle="--", linewidth=1,
                   label="even share")
    empty = sum(after.get(g, 0) == 0 for g in order)
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"{kind}, largest first ({len(order)} {kind}s; {empty} with no curated image)")
    ax.set_ylabel("images")
    ax.set_title(f"{kind} sizes before and after balancing")
    ax.legend(fontsize=8)
    return _save(fig, path)
