"""Near-duplicate removal with faiss, decontamination against eval sets, and balance to `size`."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pas.config import DataError, require

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DedupConfig:
    """params.dedup: cosine thresholds within the set and against the evaluation sets."""

    threshold: float = 0.95
    eval_threshold: float = 0.95

    def validate(self, prefix: str) -> None:
        """Thresholds are cosine similarities."""
        for name in ("threshold", "eval_threshold"):
            value = getattr(self, name)
            require(0.0 < value <= 1.0, f"{prefix}.{name}", value, "use a cosine similarity in (0, 1]")


def _range_pairs(index_vectors: np.ndarray, queries: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatIP(index_vectors.shape[1])
    index.add(np.ascontiguousarray(index_vectors, dtype=np.float32))
    lims, _, ids = index.range_search(np.ascontiguousarray(queries, dtype=np.float32), threshold)
    rows = np.repeat(np.arange(len(queries)), np.diff(lims).astype(np.int64))
    return rows, ids


def duplicate_groups(embeddings: np.ndarray, hashes: list[str], threshold: float) -> np.ndarray:
    """Connected components of the 'cosine >= threshold or same pixel hash' graph: (N,) group ids."""
    n = len(embeddings)
    rows, cols = _range_pairs(embeddings, embeddings, threshold)
    first: dict[str, int] = {}
    hash_rows, hash_cols = [], []
    for i, h in enumerate(hashes):
        if h:
            j = first.setdefault(h, i)
            if j != i:
                hash_rows.append(i)
                hash_cols.append(j)
    r = np.concatenate([rows, np.asarray(hash_rows, np.int64)])
    c = np.concatenate([cols, np.asarray(hash_cols, np.int64)])
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def keep_one_per_group(groups: np.ndarray, scores: np.ndarray, keys: list[str]) -> np.ndarray:
    """Keep the member with the highest score in each group (ties: smallest key). Returns a bool mask."""
    order = sorted(range(len(keys)), key=lambda i: (groups[i], -scores[i], keys[i]))
    keep = np.zeros(len(keys), bool)
    seen: set[int] = set()
    for i in order:
        if groups[i] not in seen:
            seen.add(groups[i])
            keep[i] = True
    return keep


def contaminated(embeddings: np.ndarray, hashes: list[str], eval_embeddings: np.ndarray, eval_hashes: set[str],
                 threshold: float) -> np.ndarray:
    """Bool mask of candidates within `threshold` cosine of any eval image, or sharing its pixel hash."""
    mask = np.array([bool(h) and h in eval_hashes for h in hashes])
    if len(eval_embeddings):
        rows, _ = _range_pairs(eval_embeddings, embeddings, threshold)
        mask[np.unique(rows)] = True
    return mask


def balance(rows: list[dict[str, Any]], size: int, concepts: list[str]) -> list[int]:
    """Pick exactly `size` row indices, as even across concepts as the survivors allow.

    Each concept's survivors are ranked by domain score (ties: key); concepts short of their
    share leave room that the others fill round-robin, deterministically.
    """
    if len(rows) < size:
        raise DataError(f"only {len(rows)} images survived filter and dedup but size={size}; raise oversample, "
                         "lower filter.threshold or raise dedup.threshold")
    ranked = {c: [] for c in concepts}
    for i, row in sorted(enumerate(rows), key=lambda t: (-t[1]["domain_score"], t[1]["key"])):
        ranked[row["concept"]].append(i)
    picked: list[int] = []
    cursor = {c: 0 for c in concepts}
    while len(picked) < size:
        for c in concepts:
            if len(picked) == size:
                break
            if cursor[c] < len(ranked[c]):
                picked.append(ranked[c][cursor[c]])
                cursor[c] += 1
    return sorted(picked)
