"""Exact re-ranking of a compressed index's candidates from the stored vectors.

IVF-PQ keeps a web-scale pool's lists small enough for memory (about 72 bytes a vector at 512 dims), but its
coarse codes alone miss many true neighbours on clustered CLIP-like data. Asking it for `factor` x k candidates and
re-scoring those exactly, from the float16 vectors on disk, recovers them at the cost of a few random reads.
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
        """(similarities (Q, k), ids (Q, k)) by exact inner product among the index's top factor x k candidates."""
        _, candidates = self.index.search(queries, min(self.ntotal, max(k, k * self.factor)))
        unique = np.unique(candidates[candidates >= 0])
        vectors = self.rows(unique) if len(unique) else np.zeros((0, queries.shape[1]), np.float32)
        position = {int(i): p for p, i in enumerate(unique)}
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for q, row in enumerate(candidates):
            valid = row[row >= 0]
            exact = vectors[[position[int(i)] for i in valid]] @ queries[q] if len(valid) else np.zeros(0)
            order = np.argsort(-exact, kind="stable")[:k]
            scores[q, :len(order)], ids[q, :len(order)] = exact[order], valid[order]
        return scores, ids
