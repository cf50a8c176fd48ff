"""Near-duplicate removal within the candidate set: cosine pairs (pas.curation.neighbors), perceptual and content hashes.

Two candidates are duplicates when their CLIP cosine is >= `threshold`, or their 8x8 average hashes are
equal, or their stored bytes are identical (content hash); groups are the connected components of that
graph, across sources (generated and retrieved alike). The rule that keeps one member per group:
  1. with `prefer_source` set, a member from that source beats the others;
  2. then the highest domain score;
  3. ties: the smallest key.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pas.curation.neighbors import Neighbors, SearchConfig, similar_pairs

log = logging.getLogger(__name__)

SOURCES = ("generated", "retrieved")


@dataclass(frozen=True)
class Duplicates:
    """Duplicate groups and what linked them."""

    groups: np.ndarray  # (N,) int64 component id
    nearest: np.ndarray  # (N,) float32 best cosine to another candidate (NaN where the search did not compute one)
    edges: dict[str, int]  # pairs found per kind: embedding, pixel_hash, content_hash
    method: str  # the pair search used (exact | ivf)
    pairs: Neighbors  # the cosine pairs behind the embedding edges


def _hash_edges(hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Edges linking every item to the first item with the same non-empty hash."""
    first: dict[str, int] = {}
    rows, cols = [], []
    for i, h in enumerate(hashes):
        if h:
            j = first.setdefault(h, i)
            if j != i:
                rows.append(j)
                cols.append(i)
    return np.asarray(rows, np.int64), np.asarray(cols, np.int64)


def find_duplicates(embeddings: np.ndarray, hashes: list[str], threshold: float, content: list[str] | None = None,
                    search: SearchConfig = SearchConfig()) -> Duplicates:
    """Connected components of the 'cosine >= threshold, same pixel hash or same content hash' graph."""
    n = len(embeddings)
    pairs = similar_pairs(embeddings, threshold, cfg=search)
    edges = {"embedding": (pairs.queries, pairs.base), "pixel_hash": _hash_edges(hashes),
             "content_hash": _hash_edges(content or [""] * n)}
    r = np.concatenate([e[0] for e in edges.values()])
    c = np.concatenate([e[1] for e in edges.values()])
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(n, n))
    groups = connected_components(graph, directed=False)[1].astype(np.int64)
    return Duplicates(groups, pairs.best, {k: int(len(v[0])) for k, v in edges.items()}, pairs.method, pairs)


def duplicate_groups(embeddings: np.ndarray, hashes: list[str], threshold: float, content: list[str] | None = None,
                     search: SearchConfig = SearchConfig()) -> np.ndarray:
    """(N,) group ids of `find_duplicates`."""
    return find_duplicates(embeddings, hashes, threshold, content, search).groups


def keep_one_per_group(groups: np.ndarray, scores: np.ndarray, keys: list[str],
                       preferred: np.ndarray | None = None) -> np.ndarray:
    """Keep one member per group: preferred first (if given), then the highest score, ties the smallest key."""
    preferred = np.zeros(len(keys), bool) if preferred is None else np.asarray(preferred, bool)
    order = sorted(range(len(keys)), key=lambda i: (groups[i], not preferred[i], -scores[i], keys[i]))
    keep = np.zeros(len(keys), bool)
    seen: set[int] = set()
    for i in order:
        if groups[i] not in seen:
            seen.add(groups[i])
            keep[i] = True
    return keep


def source_breakdown(groups: np.ndarray, keep: np.ndarray, sources: list[str]) -> dict[str, object]:
    """Duplicates removed per source and how many groups mix sources."""
    removed = {s: int(sum(1 for i, src in enumerate(sources) if src == s and not keep[i])) for s in SOURCES}
    members: dict[int, set[str]] = {}
    for g, src in zip(groups.tolist(), sources):
        members.setdefault(g, set()).add(src)
    sizes = np.bincount(groups) if len(groups) else np.zeros(0, np.int64)
    multi = {g for g in members if sizes[g] > 1}
    return {"removed_by_source": removed,
            "groups_within_source": sum(1 for g in multi if len(members[g]) == 1),
            "groups_across_sources": sum(1 for g in multi if len(members[g]) > 1)}
