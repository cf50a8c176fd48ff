"""From filtered candidates to the curated set: one decision per candidate, exactly `size` kept.

Every candidate the filter kept gets one status, in this order of precedence:
  contaminated  too close to an evaluation image (pas.decontam);
  duplicate     in a near-duplicate group whose kept member is another candidate (pas.dedup);
  trimmed       a unique, clean survivor left out by balancing (pas.balance);
  curated       in the final dataset.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from pas.balance import BALANCERS
from pas.decontam import Contamination
from pas.dedup import SOURCES, DedupConfig, Duplicates, find_duplicates, keep_one_per_group, source_breakdown

log = logging.getLogger(__name__)

STATUSES = ("curated", "trimmed", "duplicate", "contaminated")


@dataclass
class Curation:
    """The curated rows, one decision row per input candidate, and the stage metrics."""

    curated: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    metrics: dict[str, Any]


def _nan_to_none(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def curate(rows: list[dict[str, Any]], embeddings: np.ndarray, content: list[str], dirty: Contamination,
           size: int, concepts: list[str], cfg: DedupConfig, seed: int = 0) -> Curation:
    """Group duplicates, drop contaminated candidates, balance the rest to exactly `size`."""
    keys = [r["key"] for r in rows]
    sources = [r["source"] for r in rows]
    dups = find_duplicates(embeddings, [r["pixel_hash"] for r in rows], cfg.threshold, content, cfg.search())
    preferred = np.array([s == cfg.prefer_source for s in sources], bool)
    unique = keep_one_per_group(dups.groups, np.array([r["domain_score"] for r in rows], float), keys, preferred)
    survivors = np.flatnonzero(unique & ~dirty.mask)
    survivor_rows = [rows[i] for i in survivors]
    clusters = np.full(len(rows), -1, np.int64)
    picked, labels = BALANCERS[cfg.balance](survivor_rows, embeddings[survivors], size, concepts, cfg.clusters, seed)
    clusters[survivors] = labels
    chosen = np.zeros(len(rows), bool)
    chosen[survivors[picked]] = True

    representative = {int(g): i for i, g in enumerate(dups.groups) if unique[i]}
    sizes = np.bincount(dups.groups) if len(rows) else np.zeros(0, np.int64)
    decisions = []
    for i, row in enumerate(rows):
        status = ("contaminated" if dirty.mask[i] else "duplicate" if not unique[i]
                  else "curated" if chosen[i] else "trimmed")
        rep = representative[int(dups.groups[i])]
        decisions.append({
            "key": row["key"], "shard": row["shard"], "source": row["source"], "concept": row["concept"],
            "domain_score": float(row["domain_score"]), "concept_score": float(row["concept_score"]),
            "status": status, "group": int(dups.groups[i]), "group_size": int(sizes[dups.groups[i]]),
            "duplicate_of": "" if rep == i else keys[rep], "nearest": _nan_to_none(dups.nearest[i]),
            "eval_set": dirty.sets[dirty.set_index[i]] if dirty.set_index[i] >= 0 else "",
            "eval_item": int(dirty.item[i]), "eval_signal": dirty.signal[i],
            "eval_nearest": _nan_to_none(dirty.nearest[i]),
            "copy_score": _nan_to_none(dirty.copy_score[i]), "cluster": int(clusters[i]),
        })
    curated = [rows[i] for i in np.flatnonzero(chosen)]
    return Curation(curated, decisions, _metrics(rows, decisions, curated, dups, unique, dirty, concepts, cfg))


def _metrics(rows: list[dict[str, Any]], decisions: list[dict[str, Any]], curated: list[dict[str, Any]],
             dups: Duplicates, unique: np.ndarray, dirty: Contamination, concepts: list[str], cfg: DedupConfig) -> dict[str, Any]:
    """Counts that add up: input == sum(status); per concept, per source, per evaluation set, per signal."""
    status = {s: sum(d["status"] == s for d in decisions) for s in STATUSES}
    signals = {s: sum(d["eval_signal"] == s for d in decisions) for s in ("hash", "copy", "embedding")}
    group_sizes = np.bincount(dups.groups) if len(rows) else np.zeros(0, np.int64)
    metrics: dict[str, Any] = {
        "input": len(rows), "status": status, "curated": len(curated),
        "duplicate_groups": int((group_sizes > 1).sum()), "duplicates_removed": int((~unique).sum()),
        "duplicate_edges": dups.edges, "pair_search": dups.method,
        **source_breakdown(dups.groups, unique, [r["source"] for r in rows]),
        "contaminated_removed": int(dirty.mask.sum()), "contaminated_by_set": dirty.per_set,
        "contaminated_by_signal": signals, "eval_images": dirty.sizes,
        "survivors": status["curated"] + status["trimmed"], "balance": cfg.balance,
        "per_concept": {c: sum(r["concept"] == c for r in curated) for c in concepts},
        "by_source": {s: sum(r["source"] == s for r in curated) for s in SOURCES},
    }
    if any(d["cluster"] >= 0 for d in decisions):
        counts = Counter(d["cluster"] for d in decisions if d["status"] == "curated")
        metrics["per_cluster"] = {str(k): v for k, v in sorted(counts.items())}
    return metrics
