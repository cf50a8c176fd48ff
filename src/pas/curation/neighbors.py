"""All pairs above a cosine threshold: exact blocked search where it fits, an IVF join with verification beyond.

    exact  every query against every base vector in float32 blocks: O(Nq * Nb * D), exact by construction.
    ivf    PCA to `reduce_dim` + spherical k-means (faiss) into `nlist` lists; each query is compared, as one
           matrix product per list, with the lists of its `nprobe` nearest centroids, keeping pairs whose
           reduced cosine reaches threshold - margin; every such candidate is verified with its exact
           cosine in the full space, so the result has no false positives and misses only pairs that fall
           into lists the query did not probe. O(N * nlist * d + nprobe * N^2 * d / nlist) with d the
           reduced dimension; memory stays a small multiple of the input.

`auto` picks exact while sqrt(Nq * Nb) <= exact_max, else ivf. Inputs may be float16 (converted block by
block). Pairs of one set with itself are returned once, as (i, j) with i < j.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from pas.core.config import require

log = logging.getLogger(__name__)

_BLOCK = 4096  # query rows per matrix product in the exact path
_CELLS = 1 << 22  # similarity entries per matrix product (16 MiB of float32)
_RESIDENT = 1 << 29  # the exact path converts a base of up to 512 MiB (float32) to float32 once


@dataclass(frozen=True)
class SearchConfig:
    """How pairs are searched: the method and the IVF knobs (part of params.dedup)."""

    index: str = "auto"  # auto | exact | ivf
    exact_max: int = 50_000  # auto: exact while sqrt(queries * base) <= exact_max
    nlist: int = 0  # IVF lists; 0: a power of two near 2 * sqrt(base)
    nprobe: int = 8  # lists each query is compared with
    reduce_dim: int = 128  # PCA dimension of the IVF candidate search; 0: no reduction
    margin: float = 0.05  # candidates need reduced cosine >= threshold - margin before verification

    def validate(self, prefix: str) -> None:
        """Check ranges and the method name."""
        require(self.index in ("auto", *METHODS), f"{prefix}.index", self.index,
                f"use one of auto, {', '.join(METHODS)}")
        require(self.exact_max >= 1, f"{prefix}.exact_max", self.exact_max, "use a positive integer")
        require(self.nlist >= 0, f"{prefix}.nlist", self.nlist, "use 0 (auto) or a positive integer")
        require(self.nprobe >= 1, f"{prefix}.nprobe", self.nprobe, "use a positive integer")
        require(self.reduce_dim >= 0, f"{prefix}.reduce_dim", self.reduce_dim,
                "use 0 (no reduction) or a positive integer")
        require(0.0 <= self.margin < 1.0, f"{prefix}.margin", self.margin, "use a number in [0, 1)")


@dataclass(frozen=True)
class Neighbors:
    """Pairs at or above the threshold and, per query, the best exact cosine the search computed."""

    queries: np.ndarray  # (P,) int64 query row (self-join: the smaller index)
    base: np.ndarray  # (P,) int64 base row (self-join: the larger index)
    similarity: np.ndarray  # (P,) float32 exact cosine
    best: np.ndarray  # (Nq,) float32; exact: the nearest neighbour; ivf: best verified candidate, NaN if none
    method: str


def choose_method(n_queries: int, n_base: int, cfg: SearchConfig) -> str:
    """The method `auto` resolves to for these sizes."""
    if cfg.index != "auto":
        return cfg.index
    return "exact" if math.sqrt(float(n_queries) * float(n_base)) <= cfg.exact_max else "ivf"


def similar_pairs(base: np.ndarray, threshold: float, queries: np.ndarray | None = None,
                  cfg: SearchConfig = SearchConfig(), seed: int = 0) -> Neighbors:
    """Every (query, base) pair with cosine >= threshold; `queries=None` joins `base` with itself.

    base: (Nb, D) unit vectors; queries: (Nq, D) unit vectors (float16 or float32).
    """
    n_queries = len(base) if queries is None else len(queries)
    method = choose_method(n_queries, len(base), cfg)
    if len(base) == 0 or n_queries == 0:
        empty = np.zeros(0, np.int64)
        return Neighbors(empty, empty, np.zeros(0, np.float32), np.full(n_queries, np.nan, np.float32), method)
    log.info("pairs >= %.3f among %d x %d vectors by %s search", threshold, n_queries, len(base), method)
    return METHODS[method](base, queries, threshold, cfg, seed)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def exact_pairs(base: np.ndarray, queries: np.ndarray | None, threshold: float, cfg: SearchConfig,
                seed: int = 0) -> Neighbors:
    """Blocked brute force: exact pairs and the exact nearest-neighbour cosine of every query."""
    self_join = queries is None
    queries = base if self_join else queries
    best = np.full(len(queries), -np.inf, np.float32)
    rows, cols, sims = [], [], []
    whole = _f32(base) if base.shape[0] * base.shape[1] * 4 <= _RESIDENT else None  # convert once when small
    for q0 in range(0, len(queries), _BLOCK):
        chunk = _f32(queries[q0 : q0 + _BLOCK])  # (Q, D)
        base_step = max(1024, _CELLS // len(chunk))  # few queries: fewer, larger products
        for b0 in range(0, len(base), base_step):
            block = whole[b0 : b0 + base_step] if whole is not None else _f32(base[b0 : b0 + base_step])  # (B, D)
            scores = chunk @ block.T  # (Q, B)
            if self_join:
                overlap = np.arange(max(q0, b0), min(q0 + len(scores), b0 + len(block)))
                scores[overlap - q0, overlap - b0] = -np.inf
            row_max = scores.max(axis=1)
            np.maximum(best[q0 : q0 + len(scores)], row_max, out=best[q0 : q0 + len(scores)])
            hit = np.flatnonzero(row_max >= threshold)  # only rows with a pair are scanned again
            r, c = np.nonzero(scores[hit] >= threshold)
            r, c = hit[r] + q0, c + b0
            keep = r < c if self_join else slice(None)
            rows.append(r[keep])
            cols.append(c[keep])
            sims.append(scores[r[keep] - q0, c[keep] - b0])
    best[~np.isfinite(best)] = np.nan
    return Neighbors(np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64),
                     np.concatenate(sims).astype(np.float32), best, "exact")


def _reduce(base: np.ndarray, queries: np.ndarray | None, dim: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """PCA-project (trained on a sample of base) and re-normalise; no projection when dim is 0 or >= D."""
    d = base.shape[1]
    sample = _f32(base[np.sort(rng.choice(len(base), min(len(base), max(20_000, 4 * d)), replace=False))])
    pca = None
    if 0 < dim < d and len(sample) > dim:
        pca = faiss.PCAMatrix(d, dim)
        pca.train(sample)

    def apply(x: np.ndarray) -> np.ndarray:
        out = np.empty((len(x), dim if pca is not None else d), np.float32)
        for s in range(0, len(x), 65536):
            chunk = _f32(x[s : s + 65536])
            out[s : s + 65536] = pca.apply(chunk) if pca is not None else chunk
        faiss.normalize_L2(out)
        return out

    return apply(base), None if queries is None else apply(queries)


def _lists(red_base: np.ndarray, red_queries: np.ndarray, nlist: int, nprobe: int, seed: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means on base; (primary list of every base row, nprobe lists of every query row)."""
    d = red_base.shape[1]
    train = red_base[np.sort(rng.choice(len(red_base), min(len(red_base), 40 * nlist), replace=False))]
    kmeans = faiss.Kmeans(d, nlist, niter=10, spherical=True, seed=seed, max_points_per_centroid=40)
    kmeans.train(train)
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(kmeans.centroids)

    def assign(x: np.ndarray, k: int) -> np.ndarray:
        out = np.empty((len(x), k), np.int64)
        for s in range(0, len(x), 65536):
            out[s : s + 65536] = quantizer.search(x[s : s + 65536], k)[1]
        return out

    if red_queries is red_base:
        probes = assign(red_base, nprobe)
        return probes[:, 0].copy(), probes
    return assign(red_base, 1)[:, 0], assign(red_queries, nprobe)


def ivf_pairs(base: np.ndarray, queries: np.ndarray | None, threshold: float, cfg: SearchConfig,
              seed: int = 0) -> Neighbors:
    """IVF self/cross join on reduced vectors, then exact verification of every candidate pair."""
    rng = np.random.default_rng(seed)
    self_join = queries is None
    red_base, red_queries = _reduce(base, queries, cfg.reduce_dim, rng)
    red_queries = red_base if self_join else red_queries
    nlist = cfg.nlist or 2 ** round(math.log2(max(2.0 * math.sqrt(len(base)), 1.0)))
    nlist = int(min(max(nlist, 1), max(1, len(base) // 8)))
    nprobe = min(cfg.nprobe, nlist)
    primary, probes = _lists(red_base, red_queries, nlist, nprobe, seed, rng)
    order = np.argsort(primary, kind="stable")  # base rows grouped by list
    bounds = np.searchsorted(primary[order], np.arange(nlist + 1))
    flat = probes.ravel()
    by_list = np.argsort(flat, kind="stable")
    qbounds = np.searchsorted(flat[by_list], np.arange(nlist + 1))
    query_of = by_list // nprobe
    loose = threshold - cfg.margin
    rows, cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for lst in range(nlist):
        members = order[bounds[lst] : bounds[lst + 1]]
        asking = query_of[qbounds[lst] : qbounds[lst + 1]]
        if len(members) == 0 or len(asking) == 0:
            continue
        block = red_base[members]  # (M, d)
        step = max(1, _CELLS // len(members))
        for s in range(0, len(asking), step):
            q = asking[s : s + step]
            r, c = np.nonzero(red_queries[q] @ block.T >= loose)  # (Q, M) reduced cosines
            i, j = q[r], members[c]
            if self_join:
                keep = i != j
                i, j = np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep])
            rows.append(i)
            cols.append(j)
    del red_base, red_queries
    candidates = np.unique(np.stack([np.concatenate(rows), np.concatenate(cols)]).astype(np.int64), axis=1)
    sims = verify(base, base if self_join else queries, candidates[1], candidates[0])
    log.info("ivf: %d lists, nprobe %d, %d candidate pairs verified, %d kept", nlist, nprobe,
             candidates.shape[1], int((sims >= threshold).sum()))
    n_queries = len(base) if self_join else len(queries)
    best = np.full(n_queries, -np.inf, np.float32)
    np.maximum.at(best, candidates[0], sims)
    if self_join:
        np.maximum.at(best, candidates[1], sims)
    best[~np.isfinite(best)] = np.nan
    keep = sims >= threshold
    return Neighbors(candidates[0][keep], candidates[1][keep], sims[keep], best, "ivf")


def verify(base: np.ndarray, queries: np.ndarray, base_rows: np.ndarray, query_rows: np.ndarray) -> np.ndarray:
    """Exact cosines of (query_rows[k], base_rows[k]) pairs in the full space: (P,) float32."""
    out = np.empty(len(base_rows), np.float32)
    step = 1 << 16
    for s in range(0, len(base_rows), step):
        a, b = _f32(queries[query_rows[s : s + step]]), _f32(base[base_rows[s : s + step]])
        out[s : s + step] = np.einsum("ij,ij->i", a, b)
    return out


METHODS: dict[str, Callable[..., Neighbors]] = {"exact": exact_pairs, "ivf": ivf_pairs}
