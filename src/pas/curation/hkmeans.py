"""Hierarchical k-means and hierarchical sampling, as facebookresearch/ssl-data-curation does them (Vo et al. 2024,
"Automatic Data Curation for Self-Supervised Learning: A Clustering-Based Approach"; the curation behind LVD-142M).

    tree = hierarchical_kmeans(embeddings, plan(size, len(embeddings), HKMeansConfig()), seed)
    picked = hierarchical_sampling(tree, size, seed)          # exactly `size` indices when there are enough points

Level 1 clusters the points, level l clusters the centroids of level l-1; every level but the first is refined by
resampling (k-means again on the points closest to each centroid, then every point reassigned), which spreads the
centroids evenly over the data instead of piling them into its dense head. Sampling walks the tree top-down: a
cluster's quota is split over its children as evenly as their sizes allow, then drawn at random inside each
level-1 cluster (the `r` strategy).

Defaults (HKMeansConfig and `plan`), each from the official repository, facebookresearch/ssl-data-curation at
commit 7a48ee3 (file:line):
  levels 2            configs/2levels_random_embeddings.yaml:2 `n_levels: 2` (README's toy: `n_levels=2`)
  clusters (scaled)   level 1: ceil(size / 4), each further level a fifth of the one below: the 2-level config's
                      n_clusters 5000, 1000 (configs/2levels_random_embeddings.yaml:6-8) for README's
                      `run_hierarchical_sampling.py --target_size 20000` from 100k points
  resamples           level 1: 0, above it: 10. configs/4levels_web_based_images.yaml:22-28 ("For efficiency, we do
                      not use resampling in the first level"); n_resamples=10 in src/hierarchical_kmeans_gpu.py:94
  sample sizes        ceil(average cluster size / 2): configs/2levels_random_embeddings.yaml:19-23 ("roughly half
                      the average cluster size": 10 and 3 for 20 and 5); the "closest" resampling,
                      hierarchical_kmeans_gpu.py:97 and :168-185
  iters 50            configs/2levels_random_embeddings.yaml:4 `n_iters: 50`; hierarchical_kmeans_gpu.py:150
  sampling `r`        src/hierarchical_sampling.py:178-212 (top-down, `sampling_strategy="r"` at :182), recursive
                      :123-175, the quota split find_subcluster_target_size :97-120 with _find_best_cut_left :71-94,
                      the random draw inside a level-1 cluster :144-149
  seeding             k-means++ with 2 + log k greedy local trials: src/kmeans_gpu.py:59-173 (init_method="kmeans++"
                      in hierarchical_kmeans_gpu.py:95), in float32 (`kmeans_plusplus`)
Deviations, all for one machine: faiss's Lloyd iterations (on the GPU when faiss has one) trained on at most
`train_per_cluster` points per centroid (faiss's own subsampling; the official trains on all points), seeded by
k-means++ on at most SEED_PER_CLUSTER points per centroid (the official seeds on all points);
float32, not float64 (configs/2levels_random_embeddings.yaml `dtype: float64`); the random draws come from one
numpy Generator seeded by `seed` (the official uses the global np.random), so a seed gives the same tree and sample.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import faiss
import numpy as np

from pas.core.config import ConfigError, DataError, require

log = logging.getLogger(__name__)

CHUNK = 65_536  # points assigned at once (float32 copies of a chunk only: memory stays flat in N)
SEED_PER_CLUSTER = 8  # k-means++ seeds from at most k x this many of the training points (k passes over them)


@dataclass(frozen=True)
class HKMeansConfig:
    """The dedup.hkmeans_* params: an empty list means the official default scaled from `size` (see the module doc)."""

    levels: int = 2
    clusters: tuple[int, ...] = ()  # k per level, finest first
    resamples: tuple[int, ...] = ()  # resampling steps per level
    sample_sizes: tuple[int, ...] = ()  # points per cluster taken in a resampling step
    iters: int = 50  # k-means iterations
    train_per_cluster: int = 64  # faiss trains level-l k-means on at most k x this many points

    def validate(self, prefix: str, name: str = "hkmeans_") -> None:
        """Positive counts; each per-level list empty (the default) or one value per level; clusters shrink upwards."""
        key = f"{prefix}.{name}"
        require(self.levels >= 1, f"{key}levels", self.levels, "use a positive number of levels (official: 2 to 4)")
        for field, low in (("clusters", 1), ("resamples", 0), ("sample_sizes", 1)):
            values = getattr(self, field)
            require(len(values) in (0, self.levels), f"{key}{field}", list(values),
                    f"give one value per level ({key}levels={self.levels}), or [] for the official default")
            require(all(v >= low for v in values), f"{key}{field}", list(values),
                    f"use integers of at least {low}, or [] for the official default")
        require(all(a >= b for a, b in zip(self.clusters, self.clusters[1:])), f"{key}clusters", list(self.clusters),
                "list the finest level first: each level has at most as many clusters as the one below")
        require(self.iters >= 1, f"{key}iters", self.iters, "use a positive number of k-means iterations")
        require(self.train_per_cluster >= 1, f"{key}train_per_cluster", self.train_per_cluster,
                "use a positive number of training points per centroid (faiss's default is 256)")


@dataclass(frozen=True)
class Tree:
    """Cluster assignments per level: parents[0] (N,) level-1 cluster of every point, parents[l] (k_l,) level-(l+1)
    cluster of every level-l cluster; `sizes[l]` counts the points under each level-(l+1) cluster."""

    parents: tuple[np.ndarray, ...]
    sizes: tuple[np.ndarray, ...]

    def labels(self, level: int) -> np.ndarray:
        """(N,) the level-`level` cluster (1 = finest) of every point."""
        out = self.parents[0]
        for parent in self.parents[1:level]:
            out = parent[out]
        return out


def scaled_clusters(size: int, levels: int) -> tuple[int, ...]:
    """The official ratio: ceil(size / 4) clusters at level 1, then a fifth of the level below (at least 1)."""
    out = [max(1, math.ceil(size / 4))]
    for _ in range(levels - 1):
        out.append(max(1, math.ceil(out[-1] / 5)))
    return tuple(out)


def plan(size: int, points: int, cfg: HKMeansConfig, prefix: str = "dedup") -> HKMeansConfig:
    """`cfg` with every default filled in for `size` and `points`; a ConfigError names a count above its points."""
    clusters = cfg.clusters or tuple(min(k, points) for k in scaled_clusters(size, cfg.levels))
    for level, k in enumerate(clusters):
        below = points if level == 0 else clusters[level - 1]
        if k > below:
            what = f"the {points} images that survived filter and dedup" if level == 0 else f"level {level}'s clusters"
            raise ConfigError(f"{prefix}.hkmeans_clusters[{level}]={k} is more than {what} ({below}); use at most "
                              f"{below} there, or [] for the official scaling from size")
    resamples = cfg.resamples or tuple(0 if level == 0 else 10 for level in range(cfg.levels))
    sizes = cfg.sample_sizes or tuple(
        max(1, math.ceil((points if level == 0 else clusters[level - 1]) / k / 2)) for level, k in enumerate(clusters))
    return HKMeansConfig(cfg.levels, clusters, resamples, sizes, cfg.iters, cfg.train_per_cluster)


def kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(k, D) greedy k-means++ seeds of the float32 rows x: each new seed is the best of 2 + log k candidates drawn
    in proportion to the squared distance to the seeds so far (src/kmeans_gpu.py:59-173, after scikit-learn's
    _kmeans_plusplus; kept in float32 here, where scikit-learn's upcasts every pass over x to float64)."""
    norms = np.einsum("ij,ij->i", x, x)
    trials = 2 + int(np.log(k))  # kmeans_gpu.py:110-111
    chosen = np.empty(k, np.int64)
    chosen[0] = rng.integers(len(x))
    closest = np.maximum(norms - 2 * x @ x[chosen[0]] + norms[chosen[0]], 0)
    for c in range(1, k):
        candidates = np.minimum(np.searchsorted(np.cumsum(closest, dtype=np.float64), rng.random(trials) *
                                                closest.sum(dtype=np.float64)), len(x) - 1)
        dist = np.maximum(norms[None, :] - 2 * (x[candidates] @ x.T) + norms[candidates, None], 0)  # (trials, N)
        np.minimum(closest[None, :], dist, out=dist)
        best = int(np.argmin(dist.sum(axis=1, dtype=np.float64)))
        chosen[c], closest = candidates[best], dist[best]
    return x[chosen]


def _kmeans(x: np.ndarray, k: int, cfg: HKMeansConfig, seed: int) -> np.ndarray:
    """(k, D) float32 centroids of k-means (L2, as the official dist="l2"): greedy k-means++ seeding, then faiss
    Lloyd iterations, on the GPU when faiss has one. The seeding matters: from a random start the centroids stay
    where the data is dense, and resampling cannot spread them over the thin modes."""
    k, seed = min(k, len(x)), seed % (2**31 - 1)  # k <= N, as the official kmeans_gpu.py kmeans() clamps it
    rng = np.random.default_rng(seed)
    if len(x) > k * cfg.train_per_cluster:  # faiss would subsample too: draw the rows here, converting only those
        train = np.ascontiguousarray(x[np.sort(rng.choice(len(x), k * cfg.train_per_cluster, replace=False))],
                                     dtype=np.float32)
    else:
        train = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=cfg.iters, seed=seed, max_points_per_centroid=cfg.train_per_cluster,
                      min_points_per_centroid=1, gpu=faiss.get_num_gpus() > 0)
    seeds = train if len(train) <= k * SEED_PER_CLUSTER else train[rng.choice(len(train), k * SEED_PER_CLUSTER,
                                                                                replace=False)]
    km.train(train, init_centroids=kmeans_plusplus(seeds, k, rng))
    return km.centroids


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) nearest centroid of every row and (N,) its squared L2 distance, in float32 chunks."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    labels, dist = np.empty(len(x), np.int64), np.empty(len(x), np.float32)
    for start in range(0, len(x), CHUNK):
        d, i = index.search(np.ascontiguousarray(x[start:start + CHUNK], dtype=np.float32), 1)
        labels[start:start + CHUNK], dist[start:start + CHUNK] = i[:, 0], d[:, 0]
    return labels, dist


def _closest(labels: np.ndarray, dist: np.ndarray, per_cluster: int) -> np.ndarray:
    """Indices of the `per_cluster` rows nearest their centroid in every cluster (ties: index)."""
    order = np.lexsort((np.arange(len(labels)), dist, labels))
    first = np.searchsorted(labels[order], labels[order], side="left")
    return np.sort(order[np.arange(len(order)) - first < per_cluster])


def _level(x: np.ndarray, k: int, resamples: int, per_cluster: int, cfg: HKMeansConfig, seed: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """One level: k-means, then `resamples` rounds of k-means on the points closest to each centroid and
    reassignment of every point (hierarchical_kmeans_gpu.py:147-158, then the loop :160-229: the "closest" sample
    :168-185, k-means on it :207-218, reassignment :219-225); centroids, labels."""
    centroids = _kmeans(x, k, cfg, seed)
    labels, dist = assign(x, centroids)
    if per_cluster > 1:  # hierarchical_kmeans_gpu.py:160 `if sample_sizes[kmid] > 1`
        for step in range(resamples):
            centroids = _kmeans(x[_closest(labels, dist, per_cluster)], k, cfg, seed + 1 + step)
            labels, dist = assign(x, centroids)
    return centroids, labels


def hierarchical_kmeans(x: np.ndarray, cfg: HKMeansConfig, seed: int = 0) -> Tree:
    """The tree of `plan`ned `cfg` over the (N, D) embeddings x (any float dtype; converted a chunk at a time)."""
    parents, sizes = [], []
    points: np.ndarray = x
    for level, k in enumerate(cfg.clusters):
        centroids, labels = _level(points, k, cfg.resamples[level], cfg.sample_sizes[level], cfg,
                                   seed * 1000 + 100 * level)
        weights = np.ones(len(points)) if level == 0 else sizes[-1]
        sizes.append(np.bincount(labels, weights=weights, minlength=len(centroids)).astype(np.int64))
        parents.append(labels)
        log.info("hkmeans level %d: %d clusters of %d points (sizes %d-%d)", level + 1, len(centroids), len(points),
                 sizes[-1].min(), sizes[-1].max())
        points = centroids  # the next level clusters this level's centroids (hierarchical_kmeans_gpu.py:141-144)
    return Tree(tuple(parents), tuple(sizes))


def split_quota(sizes: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """How many points each cluster gives: min(cut, size) for the best cut, the remainder +1 to random clusters
    above the cut (find_subcluster_target_size, hierarchical_sampling.py:97-120); all of them when short."""
    sizes = np.asarray(sizes, np.int64)
    if sizes.sum() <= target:
        return sizes.copy()
    low, high = 0, int(sizes.max())  # _find_best_cut_left, hierarchical_sampling.py:71-94
    while high - low > 1:
        mid = (low + high) // 2
        if np.minimum(mid, sizes).sum() > target:
            high = mid
        else:
            low = mid
    cut = high if np.minimum(high, sizes).sum() <= target else low
    out = np.minimum(cut, sizes)
    remainder = target - int(out.sum())
    if remainder:
        out[rng.choice(np.flatnonzero(sizes > cut), remainder, replace=False)] += 1
    return out


def _children(parent: np.ndarray, n_parents: int) -> list[np.ndarray]:
    """Members of every parent cluster, in index order."""
    order = np.argsort(parent, kind="stable")
    return np.split(order, np.searchsorted(parent[order], np.arange(1, n_parents)))


def hierarchical_sampling(tree: Tree, target: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of `target` points (all of them when there are fewer), drawn top-down through the tree with
    the official `r` strategy (hierarchical_sampling.py:178-200, recursive :123-175, random draw :144-149)."""
    rng = np.random.default_rng(seed)
    top = len(tree.parents) - 1
    quota = split_quota(tree.sizes[top], target, rng)
    for level in range(top, 0, -1):  # quota of each level-(level+1) cluster -> quota of each level-`level` cluster
        below = np.zeros(len(tree.sizes[level - 1]), np.int64)
        for cluster, members in enumerate(_children(tree.parents[level], len(quota))):
            if quota[cluster]:
                below[members] = split_quota(tree.sizes[level - 1][members], int(quota[cluster]), rng)
        quota = below
    picked = []
    for cluster, members in enumerate(_children(tree.parents[0], len(quota))):
        if quota[cluster] >= len(members):
            picked.append(members)
        elif quota[cluster]:
            picked.append(rng.choice(members, int(quota[cluster]), replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def hkmeans_sample(embeddings: np.ndarray, size: int, cfg: HKMeansConfig, seed: int = 0, prefix: str = "dedup"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Exactly `size` sorted row indices of the (N, D) embeddings, balanced down the hierarchical k-means tree, and
    (N,) the top-level cluster of every row; a DataError when fewer than `size` rows are given."""
    if len(embeddings) < size:
        raise DataError(f"only {len(embeddings)} images survived filter and dedup but size={size}; raise oversample, "
                        "lower filter.threshold or raise dedup.threshold")
    tree = hierarchical_kmeans(embeddings, plan(size, len(embeddings), cfg, prefix), seed)
    picked = hierarchical_sampling(tree, size, seed)
    assert len(picked) == size, (len(picked), size)  # split_quota hands every cluster at most its size
    return picked, tree.labels(len(tree.parents))
