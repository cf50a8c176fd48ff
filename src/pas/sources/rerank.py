"""Exact re-ranking of a compressed index's candidates from the stored vectors.

IVF-PQ keeps a web-scale pool's lists small enough for memory (72 to 136 bytes a vector at 512 dims), but its
codes alone miss many true neighbours on clustered CLIP-like data: inside a cluster the neighbours differ by less
than the quantisation error. Asking it for `factor` x k candidates and re-scoring those exactly, from the float16
vectors on disk, recovers them at the cost of a few random reads (pool_index.tune sets the factor).
"""
from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np

Rows = Callable[[np.ndarray], np.ndarray]  # ids (M,) -> their unit vectors (M, D) float32


class Reranked:
    """Looks like the faiss index it wraps for search and ntotal; search re-scores `factor` x k candidates."""

    def __init__(self, index: faiss.Index, rows: Rows, factor: int) -> None:
        self.index, self.rows, self.factor = index, rows, factor

    @property
    def ntotal(self) -> int:
        """Vectors in the index."""
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities (Q, k), ids (Q, k)) by exact inner product among the index's top factor x k candidates,
        in query batches whose candidate vectors stay near 64k rows."""
        wanted = min(self.ntotal, max(k, k * self.factor))
        batch = max(1, 65_536 // max(wanted, 1))
        parts = [self._search(queries[start:start + batch], k, wanted) for start in range(0, len(queries), batch)]
        if not parts:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _search(self, queries: np.ndarray, k: int, wanted: int) -> tuple[np.ndarray, np.ndarray]:
        _, candidates = self.index.search(queries, wanted)
        unique = np.unique(candidates[candidates >= 0])
        vectors = self.rows(unique) if len(unique) else np.zeros((0, queries.shape[1]), np.float32)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for q, row in enumerate(candidates):
            valid = row[row >= 0]
            exact = vectors[np.searchsorted(unique, valid)] @ queries[q] if len(valid) else np.zeros(0)
            order = np.argsort(-exact, kind="stable")[:k]
            scores[q, :len(order)], ids[q, :len(order)] = exact[order], valid[order]
        return scores, ids
