"""From filtered candidates to the curated set: one decision per candidate, exactly `size` kept.

Every candidate the filter kept gets one status, in this order of precedence:
  contaminated  too close to an evaluation image (pas.curation.decontam);
  duplicate     in a near-duplicate group whose kept member is another candidate (pas.curation.duplicates);
  trimmed       a unique, clean survivor left out by balancing (pas.curation.balance);
  curated       in the final dataset.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pas.core.config import require
from pas.core.runtime import pick_device
from pas.core.shards import load_embeddings, read_table
from pas.curation.balance import BALANCERS, BalanceOptions, source_share
from pas.curation.decontam import Contamination, Thresholds, decontaminate, eval_splits
from pas.curation.diversity import against_references
from pas.curation.duplicates import SOURCES, Duplicates, find_duplicates, keep_one_per_group, source_breakdown
from pas.curation.fingerprints import read_fingerprints
from pas.curation.hkmeans import HKMeansConfig
from pas.curation.neighbors import SearchConfig

log = logging.getLogger(__name__)

STATUSES = ("curated", "trimmed", "duplicate", "contaminated")


@dataclass(frozen=True)
class DedupConfig:
    """params.dedup: thresholds, the keep rule, the balancing mode and the pair search."""

    threshold: float = 0.95  # CLIP cosine at or above which two candidates are near-duplicates
    eval_threshold: float = 0.95  # CLIP cosine to an evaluation image at or above which a candidate goes
    copy_threshold: float = 0.97  # thumbnail correlation with a crop of an evaluation image (0: off)
    copy_max_crop: float = 0.10  # largest share of a side a copy may have lost to cropping
    prefer_source: str = "none"  # none | generated | retrieved: which member of a mixed group to keep
    balance: str = "concepts"  # concepts | clusters | hkmeans
    clusters: int = 0  # k for balance=clusters; 0: about sqrt(size)
    hkmeans_levels: int = 2  # balance=hkmeans (pas.curation.hkmeans cites each default): levels of the tree
    hkmeans_clusters: tuple[int, ...] = ()  # k per level, finest first; []: ceil(size / 4), then / 5 per level
    hkmeans_resamples: tuple[int, ...] = ()  # resampling steps per level; []: 0 at level 1, 10 above
    hkmeans_sample_sizes: tuple[int, ...] = ()  # points per cluster in a resampling step; []: half the mean cluster
    hkmeans_iters: int = 50  # k-means iterations
    hkmeans_train_per_cluster: int = 64  # faiss trains on at most k x this many points
    index: str = "auto"  # pair search: auto | exact | ivf (see pas.curation.neighbors)
    exact_max: int = 50_000
    nlist: int = 0
    nprobe: int = 8
    reduce_dim: int = 128
    margin: float = 0.05

    def validate(self, prefix: str) -> None:
        """Check thresholds, names and the pair-search settings."""
        for name in ("threshold", "eval_threshold"):
            value = getattr(self, name)
            require(0.0 < value <= 1.0, f"{prefix}.{name}", value, "use a cosine similarity in (0, 1]")
        require(0.0 <= self.copy_threshold <= 1.0, f"{prefix}.copy_threshold", self.copy_threshold,
                "use a correlation in (0, 1], or 0 to turn the copy check off")
        require(0.0 <= self.copy_max_crop < 0.5, f"{prefix}.copy_max_crop", self.copy_max_crop,
                "use a share in [0, 0.5)")
        require(self.prefer_source in ("none", *SOURCES), f"{prefix}.prefer_source", self.prefer_source,
                f"use one of none, {', '.join(SOURCES)}")
        require(self.balance in BALANCERS, f"{prefix}.balance", self.balance, f"use one of {', '.join(BALANCERS)}")
        require(self.clusters >= 0, f"{prefix}.clusters", self.clusters, "use 0 (auto) or a positive integer")
        self.hkmeans().validate(prefix)
        self.search().validate(prefix)

    def hkmeans(self) -> HKMeansConfig:
        """The balance=hkmeans settings."""
        return HKMeansConfig(self.hkmeans_levels, self.hkmeans_clusters, self.hkmeans_resamples,
                             self.hkmeans_sample_sizes, self.hkmeans_iters, self.hkmeans_train_per_cluster)

    def balance_options(self) -> BalanceOptions:
        """What the balancer reads besides the rows."""
        return BalanceOptions(self.clusters, self.hkmeans())

    def search(self) -> SearchConfig:
        """The pair-search settings."""
        return SearchConfig(self.index, self.exact_max, self.nlist, self.nprobe, self.reduce_dim, self.margin)


@dataclass
class Curation:
    """The curated rows, one decision row per input candidate, and the stage metrics."""

    curated: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    metrics: dict[str, Any]


def dedup(filtered: str | Path, candidates: str | Path, downstream: str | Path, concepts: str | Path,
          clip: str | Path, size: int, cfg: DedupConfig, real_share: float | None = None, seed: int = 0) -> Curation:
    """The stage: filter-kept candidates -> decontaminated, de-duplicated, balanced to exactly `size` (k-means
    balancing seeded by `seed`)."""
    rows = read_table(filtered).to_pylist()
    kept = [i for i, r in enumerate(rows) if r["kept"]]
    rows, embeddings = [rows[i] for i in kept], load_embeddings(Path(candidates) / "embeddings.npy")[kept]
    content, thumbs = read_fingerprints(rows)
    from pas.models.clip import ClipEncoder   # torch: only the stage's work loads it (pas plan, report import this)

    encoder = ClipEncoder(clip, pick_device())
    dirty = decontaminate(embeddings, [r["pixel_hash"] for r in rows], thumbs, eval_splits(downstream), encoder,
                          Thresholds(cfg.eval_threshold, cfg.copy_threshold, cfg.copy_max_crop), cfg.search())
    names = [c["name"] for c in json.loads(Path(concepts).read_text())["concepts"]]
    result = curate(rows, embeddings, content, dirty, size, names, cfg, seed, real_share=real_share)
    position = {r["key"]: i for i, r in enumerate(rows)}
    curated = embeddings[[position[r["key"]] for r in result.curated]]
    trains = {name: sample for name, sample in dirty.samples.items() if name.endswith("/train")}
    result.metrics["diversity_vs_downstream"] = against_references(curated, trains)
    return result


def _nan_to_none(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def curate(rows: list[dict[str, Any]], embeddings: np.ndarray, content: list[str], dirty: Contamination,
           size: int, concepts: list[str], cfg: DedupConfig, seed: int = 0, real_share: float | None = None) -> Curation:
    """Group duplicates, drop contaminated candidates, balance the rest to exactly `size`."""
    keys = [r["key"] for r in rows]
    sources = [r["source"] for r in rows]
    dups = find_duplicates(embeddings, [r["pixel_hash"] for r in rows], cfg.threshold, content, cfg.search())
    preferred = np.array([s == cfg.prefer_source for s in sources], bool)
    unique = keep_one_per_group(dups.groups, np.array([r["domain_score"] for r in rows], float), keys, preferred)
    survivors = np.flatnonzero(unique & ~dirty.mask)
    survivor_rows = [rows[i] for i in survivors]
    clusters = np.full(len(rows), -1, np.int64)
    picked, labels = BALANCERS[cfg.balance](survivor_rows, embeddings[survivors], size, concepts,
                                            cfg.balance_options(), seed)
    if real_share is not None:  # mix is a target for the curated set, not only for the candidates
        groups = labels.tolist() if cfg.balance != "concepts" else [r["concept"] for r in survivor_rows]
        picked = source_share(survivor_rows, groups, picked, real_share)
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
    metrics = _metrics(rows, decisions, curated, dups, unique, dirty, concepts, cfg)
    metrics["real_share"] = sum(r["source"] == "retrieved" for r in curated) / max(1, len(curated))
    if real_share is not None:
        metrics["real_share_target"] = real_share
        if abs(metrics["real_share"] - real_share) > 0.01:
            log.warning("the curated set is %.1f%% real against a mix target of %.1f%%: one source ran short",
                        100 * metrics["real_share"], 100 * real_share)
    empty = [c for c in concepts if not metrics["per_concept"].get(c)]
    metrics["concepts_without_images"] = len(empty)
    if empty:
        survived = {r["concept"] for r in survivor_rows}
        left = sum(c in survived for c in empty)
        why = (f"size={size} is below the {len(concepts)} concepts; raise size, or keep fewer concepts "
               "(concepts.count)" if size < len(concepts) else
               f"{left} had candidates left after filtering, de-duplication and decontamination, which balancing "
               f"({cfg.balance}) and the source mix did not pick; {len(empty) - left} had none left")
        log.warning("%d of %d concepts have no curated image (e.g. %s): %s", len(empty), len(concepts),
                    ", ".join(empty[:3]), why)
    return Curation(curated, decisions, metrics)


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
