"""Concept text embeddings -> kNN in the pool index -> per-concept retrieved images in shards."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from pas.core.config import require
from pas.core.shards import decode_image, encode_jpeg, shard_name, write_shard
from pas.sources.plan import per_concept_quota
from pas.sources.pool_sources import load_items

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrieveConfig:
    """params.retrieve: neighbours per concept, a similarity floor, and the shard encoding."""

    k: int = 400
    min_similarity: float = -1.0
    shard_size: int = 1000
    jpeg_quality: int = 90

    def validate(self, prefix: str) -> None:
        """Check ranges."""
        require(self.k >= 1, f"{prefix}.k", self.k, "use a positive integer")
        require(-1.0 <= self.min_similarity <= 1.0, f"{prefix}.min_similarity", self.min_similarity, "use -1..1")
        require(self.shard_size >= 1, f"{prefix}.shard_size", self.shard_size, "use a positive integer")


def assign(similarities: np.ndarray, neighbours: np.ndarray, quotas: list[int], min_similarity: float) -> list[dict[str, Any]]:
    """Greedy best-first assignment: each pool image goes to its best-scoring concept with room left.

    similarities, neighbours: (C, k) search results per concept. Returns one claim per image.
    """
    claims = [(float(similarities[c, r]), c, int(neighbours[c, r]), r)
              for c in range(similarities.shape[0]) for r in range(similarities.shape[1])
              if neighbours[c, r] >= 0 and similarities[c, r] >= min_similarity]
    claims.sort(key=lambda t: (-t[0], t[1], t[2]))
    taken: set[int] = set()
    filled = [0] * len(quotas)
    chosen = []
    for sim, concept, image, rank in claims:
        if image in taken or filled[concept] >= quotas[concept]:
            continue
        taken.add(image)
        filled[concept] += 1
        chosen.append({"pool_row": image, "concept_index": concept, "similarity": sim, "rank": rank})
    chosen.sort(key=lambda c: (c["concept_index"], c["rank"]))
    return chosen


def retrieve(
    index: faiss.Index, queries: np.ndarray, concepts: list[dict[str, Any]], pool_ids: list[str],
    pool_source: Path, total: int, cfg: RetrieveConfig, out_dir: Path,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Search, assign to quotas, and copy the chosen pool images into shards; return rows + metrics.

    pool_ids[i] is the pool item id of index vector i.
    """
    quotas = per_concept_quota(total, len(concepts))
    k = min(cfg.k, index.ntotal)
    similarities, neighbours = index.search(np.ascontiguousarray(queries), k)
    chosen = assign(similarities, neighbours, quotas, cfg.min_similarity)
    payload = load_items(pool_source, [pool_ids[c["pool_row"]] for c in chosen])
    rows, records, shard_index = [], [], 0

    def flush() -> None:
        nonlocal records, shard_index
        if records:
            write_shard(out_dir / shard_name("retrieved", shard_index), records)
            shard_index += 1
            records = []

    for claim in chosen:
        concept = concepts[claim["concept_index"]]
        pool_id = pool_ids[claim["pool_row"]]
        image = decode_image(payload[pool_id])
        key = f"ret{claim['pool_row']:08d}"
        meta = {"key": key, "source": "retrieved", "concept": concept["name"], "prompt": concept["prompts"][0],
                "pool_source": str(pool_source), "pool_id": pool_id, "similarity": claim["similarity"],
                "rank": claim["rank"], "shard": shard_name("retrieved", shard_index),
                "width": image.width, "height": image.height}
        records.append((key, encode_jpeg(image, cfg.jpeg_quality), meta))
        rows.append(meta)
        if len(records) == cfg.shard_size:
            flush()
    flush()
    got = np.bincount([c["concept_index"] for c in chosen], minlength=len(concepts))
    shortfall = {concepts[i]["name"]: int(q - g) for i, (q, g) in enumerate(zip(quotas, got)) if g < q}
    if shortfall:
        log.warning("retrieval fell short of quota for %d concepts: %s", len(shortfall), shortfall)
    metrics = {"images": len(rows), "requested": total, "shards": shard_index, "concepts_short": len(shortfall),
               "mean_similarity": float(np.mean([r["similarity"] for r in rows])) if rows else 0.0}
    return rows, metrics
