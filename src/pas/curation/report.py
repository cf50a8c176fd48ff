"""The dataset report: one self-contained HTML page (PNG figures embedded, no network) plus the PNGs as DVC plots.

It opens with the provenance (pinned models, params digest, git commit, date; a warning when the images come
from random tiny models), then accounts for every candidate (filter rejections by reason, then one dedup status
each, the trimmed ones named by the balance mode), the cluster (or concept) sizes before and after balancing, the
score distributions against their thresholds, example duplicate groups and decontaminated images,
sample grids per source and per concept, and diversity (Vendi score, mean pairwise cosine distance)
of the candidates and of the curated set, overall and per concept.
"""
from __future__ import annotations

import base64
import html
import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import pas.curation.report_figures as figs
from pas.core.config import require_fields
from pas.core.provenance import provenance_html
from pas.core.shards import atomic_path
from pas.curation.decontam import eval_splits
from pas.curation.dedup import STATUSES
from pas.curation.diversity import diversity
from pas.curation.fingerprints import read_images
from pas.curation.report_balance import balance_note, balance_rows, balance_summary, group_counts
from pas.data.downstream import iter_image_batches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportConfig:
    """params.report: how many examples the report shows."""

    samples: int = 8  # images per row of a sample grid
    groups: int = 6  # duplicate groups shown
    max_concepts: int = 30  # concept rows in the per-concept grid
    seed: int = 0

    def validate(self, prefix: str) -> None:
        """Positive counts."""
        require_fields(self, prefix, ("samples", "groups", "max_concepts"), lambda v: v >= 1, "use a positive integer")


@dataclass(frozen=True)
class Inputs:
    """What the report reads: the filter manifest (every candidate), dedup decisions, the curated rows."""

    filtered: list[dict[str, Any]]  # every candidate, in the order of the embeddings
    decisions: list[dict[str, Any]]  # one per filter-kept candidate
    curated: list[dict[str, Any]]
    embeddings: np.ndarray  # (N candidates, D)
    thresholds: dict[str, float]  # filter.threshold, filter.concept_threshold, dedup.threshold, ...
    downstream: Path | None = None  # evaluation sets, to show what each removed candidate matched
    retrieval_missing: dict[str, int] | None = None  # concept -> images the pool could not give (retrieve)
    balance: str = ""  # dedup.balance: the rule that trimmed survivors (concepts | clusters | hkmeans)


def accounting(inputs: Inputs) -> dict[str, Any]:
    """Counts that add up: candidates = filter rejections + filter kept; filter kept = sum of dedup statuses."""
    rejected = Counter(r["reason"] for r in inputs.filtered if not r["kept"])
    status = Counter(d["status"] for d in inputs.decisions)
    kept = sum(1 for r in inputs.filtered if r["kept"])
    return {"candidates": len(inputs.filtered), "filter_rejected": dict(sorted(rejected.items())),
            "filter_kept": kept, "dedup": {s: status.get(s, 0) for s in STATUSES},
            "curated": len(inputs.curated),
            "adds_up": (len(inputs.filtered) == kept + sum(rejected.values()) and kept == sum(status.values())
                        and status.get("curated", 0) == len(inputs.curated))}


def build_report(inputs: Inputs, cfg: ReportConfig, html_path: str | Path, figures_dir: str | Path,
                 provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the figures and the HTML page (headed by `provenance` from core.provenance.collect_provenance, when
    given); return the report metrics (counts and diversity)."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    counts = accounting(inputs)
    if not counts["adds_up"]:
        log.warning("report counts do not add up: %s", counts)
    concepts = list(dict.fromkeys(r["concept"] for r in inputs.filtered))
    row_of = {r["key"]: i for i, r in enumerate(inputs.filtered)}
    curated_idx = np.array([row_of[r["key"]] for r in inputs.curated], np.int64)
    table = {"candidates": diversity(inputs.embeddings, [r["concept"] for r in inputs.filtered]),
             "curated": diversity(inputs.embeddings[curated_idx], [r["concept"] for r in inputs.curated])}
    rng = random.Random(cfg.seed)
    out = figures_dir
    by_source = _sample_rows(inputs.curated, "source", cfg, rng)
    by_concept = _sample_rows(inputs.curated, "concept", cfg, rng)[: cfg.max_concepts]
    kind, before, after = group_counts(inputs.decisions)
    balanced = balance_summary(kind, before, after)
    sections = [  # (title, figure, table)
        ("Where the candidates went", figs.funnel(_funnel(counts), out / "funnel.png"),
         _counts_table(counts, inputs.balance)),
        ("Images per concept", figs.concept_counts(_per_concept(inputs.curated, concepts), out / "concepts.png"),
         _concept_table(inputs, concepts)),
        (f"{kind.capitalize()} sizes before and after balancing",
         figs.group_sizes(before, after, kind, out / "balance.png"),
         balance_note(balanced, inputs.balance) + _table(*balance_rows(balanced))),
        ("Scores and thresholds", figs.histograms(_panels(inputs), out / "scores.png"), ""),
        ("Duplicate groups (kept member framed in green)",
         figs.image_rows(_duplicate_rows(inputs.decisions, cfg), out / "duplicates.png"), ""),
        ("Removed as too close to an evaluation image (removed image framed, then the evaluation image it matched)",
         figs.image_rows(_contaminated_rows(inputs, cfg), out / "contaminated.png"),
         _contamination_table(inputs.decisions)),
        ("Samples per source", figs.image_rows(by_source, out / "sources.png"), ""),
        ("Samples per concept", figs.image_rows(by_concept, out / "samples.png", tile=56), ""),
        ("Diversity", figs.diversity_bars(table, out / "diversity.png"), _diversity_table(table)),
    ]
    _write_html(html_path, sections, counts, provenance)
    return {**counts, "balance": {"mode": inputs.balance, **balanced},
            "diversity": {"candidates": table["candidates"]["all"], "curated": table["curated"]["all"],
                          "curated_per_concept": {c: v for c, v in table["curated"].items() if c != "all"}},
            "figures": sorted(p.name for _, p, _ in sections)}


def _funnel(counts: dict[str, Any]) -> list[tuple[str, str, int]]:
    out = [("filter", reason, n) for reason, n in counts["filter_rejected"].items()]
    return out + [("dedup", status, counts["dedup"][status]) for status in reversed(STATUSES)]


def _per_concept(curated: list[dict[str, Any]], concepts: list[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {c: {} for c in concepts}
    for row in curated:
        bucket = out.setdefault(row["concept"], {})
        bucket[row["source"]] = bucket.get(row["source"], 0) + 1
    return out


def _series(values: list[Any], labels: list[str]) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {}
    for v, label in zip(values, labels):
        out.setdefault(label, []).append(np.nan if v is None else float(v))
    return {k: np.asarray(v, float) for k, v in sorted(out.items())}


def _panels(inputs: Inputs) -> list[figs.Panel]:
    t = inputs.thresholds
    kept = ["kept" if r["kept"] else "rejected" for r in inputs.filtered]
    d = inputs.decisions
    return [
        figs.Panel("domain score (filter)", _series([r["domain_score"] for r in inputs.filtered], kept),
                   t.get("filter.threshold"), "softmax margin, domain vs negatives"),
        figs.Panel("concept score (filter)", _series([r["concept_score"] for r in inputs.filtered], kept),
                   t.get("filter.concept_threshold"), "probability of its own concept"),
        figs.Panel("nearest other candidate (dedup)", _series([x["nearest"] for x in d],
                   ["rejected" if x["status"] == "duplicate" else "kept" for x in d]), t.get("dedup.threshold"),
                   "CLIP cosine"),
        figs.Panel("nearest evaluation image (dedup)", _series([x["eval_nearest"] for x in d],
                   ["rejected" if x["status"] == "contaminated" else "kept" for x in d]), t.get("dedup.eval_threshold"),
                   "CLIP cosine"),
        figs.Panel("best crop correlation with an evaluation image", _series([x["copy_score"] for x in d],
                   ["rejected" if x["eval_signal"] == "copy" else "kept" for x in d]), t.get("dedup.copy_threshold"),
                   "thumbnail correlation"),
    ]


def _load(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """key -> decoded image for the given rows."""
    return {rows[i]["key"]: image for i, image in read_images(rows)}


def _duplicate_rows(decisions: list[dict[str, Any]], cfg: ReportConfig) -> list[tuple[str, list[figs.Tile]]]:
    by_group: dict[int, list[dict[str, Any]]] = {}
    for d in decisions:
        if d["group_size"] > 1:
            by_group.setdefault(d["group"], []).append(d)
    chosen = sorted(by_group.values(), key=lambda g: (-len(g), min(x["key"] for x in g)))[: cfg.groups]
    members = [sorted(g, key=lambda x: (x["duplicate_of"] != "", x["key"]))[: cfg.samples] for g in chosen]
    images = _load([x for g in members for x in g])
    return [(f"group of {len(by_group[g[0]['group']])}",
             [figs.Tile(images[x["key"]], f"{x['source'][:3]} {x['status'][:5]}", x["duplicate_of"] == "")
              for x in g if x["key"] in images]) for g in members] or [("no duplicates", [])]


def _contaminated_rows(inputs: Inputs, cfg: ReportConfig) -> list[tuple[str, list[figs.Tile]]]:
    """Per signal, pairs of (removed candidate, the evaluation image it matched)."""
    dirty = sorted((d for d in inputs.decisions if d["status"] == "contaminated"), key=lambda d: d["key"])
    pairs = max(1, cfg.samples // 2)
    picked = {s: [d for d in dirty if d["eval_signal"] == s][:pairs] for s in ("hash", "copy", "embedding")}
    images = _load([d for rows in picked.values() for d in rows])
    originals = _eval_images([d for rows in picked.values() for d in rows], inputs.downstream)
    out = []
    for signal, rows in picked.items():
        tiles = []
        for d in rows:
            if d["key"] in images:
                tiles.append(figs.Tile(images[d["key"]], "removed", True))
            original = originals.get((d["eval_set"], d["eval_item"]))
            if original is not None:
                tiles.append(figs.Tile(original, f"{d['eval_set'].split('/')[-1]} #{d['eval_item']}"))
        if tiles:
            out.append((f"by {signal}", tiles))
    return out or [("none removed", [])]


def _eval_images(decisions: list[dict[str, Any]], downstream: Path | None) -> dict[tuple[str, int], Any]:
    """(eval set, position) -> image for the evaluation images the given decisions matched."""
    wanted: dict[str, set[int]] = {}
    for d in decisions:
        if d["eval_set"] and d["eval_item"] >= 0:
            wanted.setdefault(d["eval_set"], set()).add(int(d["eval_item"]))
    splits = dict(eval_splits(downstream)) if downstream is not None and wanted else {}
    out = {}
    for name, items in wanted.items():
        if name in splits:
            positions = np.array(sorted(items), np.int64)
            for where, images in iter_image_batches(splits[name].subset(positions)):
                out.update({(name, int(positions[p])): image for p, image in zip(where.tolist(), images)})
    return out


def _sample_rows(curated: list[dict[str, Any]], column: str, cfg: ReportConfig, rng: random.Random
                 ) -> list[tuple[str, list[figs.Tile]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in curated:
        groups.setdefault(row[column], []).append(row)
    picked = {k: rng.sample(v, min(cfg.samples, len(v))) for k, v in sorted(groups.items())}
    images = _load([r for rows in picked.values() for r in rows])
    return [(k, [figs.Tile(images[r["key"]], r["source"][:3] if column != "source" else r["concept"][:10])
                 for r in rows if r["key"] in images]) for k, rows in picked.items()] or [("empty", [])]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


RULES = {  # outcome -> the rule (params key) behind it, for "which rule removed what"
    "undecodable": "the image does not decode", "too_small": "filter.min_side", "aspect_ratio": "filter.max_aspect",
    "near_constant": "filter.min_pixel_std", "out_of_domain": "filter.threshold",
    "concept_mismatch": "filter.concept_threshold", "off_exemplar_cluster": "filter.exemplars",
    "contaminated": "dedup.eval_threshold / dedup.copy_threshold / equal pixels",
    "duplicate": "dedup.threshold / equal pixels", "trimmed": "dedup.balance", "curated": "",
}


def _counts_table(counts: dict[str, Any], mode: str = "") -> str:
    def rule(outcome: str) -> str:
        found = RULES.get(outcome, "")
        return f"{found}={mode} (size)" if outcome == "trimmed" and mode else found

    rows = [["candidates", "", "", counts["candidates"]]]
    rows += [["filter", reason, rule(reason), n] for reason, n in counts["filter_rejected"].items()]
    rows += [["dedup", status, rule(status), n] for status, n in counts["dedup"].items()]
    return _table(["step", "outcome", "rule", "images"], rows) + f"<p>counts add up: <b>{counts['adds_up']}</b></p>"


def _concept_table(inputs: Inputs, concepts: list[str]) -> str:
    rows = []
    for c in concepts:
        mine = [r for r in inputs.curated if r["concept"] == c]
        passed = sum(d["concept"] == c for d in inputs.decisions)
        by_source = [sum(r["source"] == s for r in mine) for s in ("generated", "retrieved")]
        missing = (inputs.retrieval_missing or {}).get(c, 0)
        rows.append([c, sum(r["concept"] == c for r in inputs.filtered), passed, len(mine), *by_source, missing])
    return _table(["concept", "candidates", "passed filter", "curated", "generated", "retrieved",
                   "missing from the pool"], rows)


def _contamination_table(decisions: list[dict[str, Any]]) -> str:
    found = Counter((d["eval_set"], d["eval_signal"]) for d in decisions if d["status"] == "contaminated")
    rows = [[name, signal, n] for (name, signal), n in sorted(found.items())]
    return _table(["evaluation set", "signal", "candidates removed"], rows)


def _diversity_table(table: dict[str, dict[str, dict[str, Any]]]) -> str:
    rows = [[group, variant, v["n"], v["vendi"], v["mean_cosine_distance"]]
            for variant, groups in table.items() for group, v in groups.items()]
    return _table(["group", "set", "images", "Vendi score", "mean cosine distance"], rows)


_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}img{max-width:100%}"
          "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px}")


def _write_html(path: str | Path, sections: list[tuple[str, Path, str]], counts: dict[str, Any],
                provenance: dict[str, Any] | None) -> None:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>pas dataset report</title><style>{_STYLE}"
             f"</style></head><body><h1>Dataset report</h1>"
             + (provenance_html(provenance) if provenance is not None else "")
             + f"<p>{counts['curated']} curated images from {counts['candidates']} candidates.</p>"]
    for title, png, extra in sections:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f"<h2>{html.escape(title)}</h2>{extra}<img alt='{html.escape(png.name)}' "
                     f"src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
