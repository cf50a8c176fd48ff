"""Domain relevance, quality rules and (filter.exemplars) exemplar clusters: every candidate is kept or rejected with
a reason."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pas.core.config import require
from pas.core.runtime import pick_device
from pas.core.shards import load_embeddings, read_table


@dataclass(frozen=True)
class FilterConfig:
    """params.filter: score thresholds and quality rules."""

    threshold: float = -1.0  # domain score (softmax margin, -1..1) an image must reach
    concept_threshold: float = 0.0  # probability of its own concept among all concepts
    logit_scale: float = 100.0
    min_side: int = 16
    max_aspect: float = 3.0
    min_pixel_std: float = 2.0
    exemplars: bool = False  # image-based filtering: keep the candidate clusters the exemplar images select
    exemplar_clusters: int = 0  # k-means clusters of the candidates; 0: one per 128 (DataComp)
    exemplar_neighbors: int = 1  # nearest clusters each exemplar image keeps (1: DataComp)

    def validate(self, prefix: str) -> None:
        """Check ranges."""
        require(-1.0 <= self.threshold <= 1.0, f"{prefix}.threshold", self.threshold, "use a number in -1..1")
        require(0.0 <= self.concept_threshold <= 1.0, f"{prefix}.concept_threshold", self.concept_threshold, "use 0..1")
        require(self.max_aspect >= 1.0, f"{prefix}.max_aspect", self.max_aspect, "use a number >= 1")
        require(self.exemplar_clusters >= 0, f"{prefix}.exemplar_clusters", self.exemplar_clusters,
                "use an integer >= 0 (0: one per 128 clustered candidates)")
        require(self.exemplar_neighbors >= 1, f"{prefix}.exemplar_neighbors", self.exemplar_neighbors,
                "use an integer >= 1")


QUALITY_REASONS = ("undecodable", "too_small", "aspect_ratio", "near_constant")   # pas's basic filter, in order


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def domain_scores(images: np.ndarray, positive: np.ndarray, negatives: np.ndarray, scale: float) -> np.ndarray:
    """Softmax margin of the domain prompt (mean of positives) over the strongest negative prompt.

    images: (N, D) unit vectors; positive: (P, D); negatives: (M, D). Returns (N,) in -1..1.
    """
    anchor = positive.mean(axis=0)
    anchor = anchor / max(np.linalg.norm(anchor), 1e-12)
    probs = _softmax(scale * images @ np.vstack([anchor[None], negatives]).T)
    return probs[:, 0] - probs[:, 1:].max(axis=1)


def concept_scores(images: np.ndarray, concept_index: np.ndarray, concept_queries: np.ndarray, scale: float) -> np.ndarray:
    """Probability each image gives its own concept among all concepts: (N,) in 0..1."""
    probs = _softmax(scale * images @ concept_queries.T)
    return probs[np.arange(len(images)), concept_index]


def reasons(rows: list[dict[str, Any]], domain: np.ndarray, concept: np.ndarray, cfg: FilterConfig) -> list[str]:
    """The first failing rule per candidate ('' when kept), in a fixed rule order."""
    out = []
    for row, d, c in zip(rows, domain, concept):
        side, long_side = min(row["width"], row["height"]), max(row["width"], row["height"])
        if not row["decodable"]:
            out.append("undecodable")
        elif side < cfg.min_side:
            out.append("too_small")
        elif long_side / max(side, 1) > cfg.max_aspect:
            out.append("aspect_ratio")
        elif row["pixel_std"] < cfg.min_pixel_std:
            out.append("near_constant")
        elif d < cfg.threshold:
            out.append("out_of_domain")
        elif c < cfg.concept_threshold:
            out.append("concept_mismatch")
        else:
            out.append("")
    return out


def filter_candidates(candidates: str | Path, concepts: str | Path, clip: str | Path, cfg: FilterConfig,
                      exemplars: str | Path = "exemplars", downstream: str | Path | None = None
                      ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The stage: every candidate of the embed output scored and kept or rejected; (rows, metrics).

    With cfg.exemplars, the images of the `exemplars` folder then keep only the candidate clusters they select
    (pas.curation.exemplar_filter, reason `off_exemplar_cluster`), and metrics `exemplars` and `oracle_exemplars`
    say whether any of them is a copy of an image of the `downstream` datasets. Without it neither folder is read."""
    document = json.loads(Path(concepts).read_text())
    if cfg.exemplars:   # a missing or empty folder stops here, before any model loads
        from pas.curation.exemplar_filter import exemplar_files

        files = exemplar_files(exemplars, document["concepts"])
    rows = read_table(Path(candidates) / "manifest.parquet").to_pylist()
    images = load_embeddings(Path(candidates) / "embeddings.npy")
    from pas.models.clip import ClipEncoder, concept_queries   # torch: only the stage's work loads it (pas plan)

    encoder = ClipEncoder(clip, pick_device())
    domain = domain_scores(images, encoder.encode_texts(document["positive_prompts"]),
                           encoder.encode_texts(document["negative_prompts"]), cfg.logit_scale)
    names = [c["name"] for c in document["concepts"]]
    own = np.array([names.index(r["concept"]) for r in rows], dtype=np.int64)
    concept = concept_scores(images, own, concept_queries(encoder, document["concepts"]), cfg.logit_scale)
    why = reasons(rows, domain, concept, cfg)
    extra: dict[str, Any] = {}
    if cfg.exemplars:   # DataComp's image-based filter after the CLIP-score rules, clustered past the quality rules
        from pas.curation.exemplar_filter import filter_by_exemplars

        pool = np.array([w not in QUALITY_REASONS for w in why], bool)
        why, extra = filter_by_exemplars(why, images, files, encoder, pool, cfg.exemplar_clusters,
                                         cfg.exemplar_neighbors, downstream)
    out = [{**r, "domain_score": float(d), "concept_score": float(c), "kept": not w, "reason": w}
           for r, d, c, w in zip(rows, domain, concept, why)]
    metrics = {"candidates": len(out), "kept": sum(r["kept"] for r in out), "rejected": dict(Counter(filter(None, why))),
               "domain_score_mean": float(domain.mean()) if len(domain) else 0.0, **extra}
    return out, metrics
