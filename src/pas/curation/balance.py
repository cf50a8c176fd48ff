"""Trim the survivors to exactly `size` images: evenly across concepts, across flat k-means clusters, or down a
hierarchical k-means tree (pas.curation.hkmeans)."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from pas.core.config import DataError
from pas.curation.hkmeans import HKMeansConfig, assign, hkmeans_sample

log = logging.getLogger(__name__)

TRAIN_PER_CLUSTER = 256  # faiss's default max_points_per_centroid


def round_robin(labels: Sequence[Hashable], scores: Sequence[float], keys: Sequence[str], size: int,
                order: Sequence[Hashable] = ()) -> list[int]:
    """Exactly `size` indices, taking the best-scored remaining item of each label in turn.

    Items are ranked by score within a label (ties: key); labels are visited in `order` (labels not
    named there follow, sorted), so a label short of its share leaves room the others fill, deterministically.
    """
    if len(labels) < size:
        raise DataError(f"only {len(labels)} images survived filter and dedup but size={size}; raise oversample, "
                        "lower filter.threshold or raise dedup.threshold")
    visit = list(dict.fromkeys([*order, *sorted(set(labels) - set(order), key=str)]))
    ranked: dict[Hashable, list[int]] = {label: [] for label in visit}
    for i in sorted(range(len(labels)), key=lambda i: (-scores[i], keys[i])):
        ranked[labels[i]].append(i)
    picked: list[int] = []
    depth = 0
    while len(picked) < size:
        for label in visit:
            if len(picked) == size:
                break
            if depth < len(ranked[label]):
                picked.append(ranked[label][depth])
        depth += 1
    return sorted(picked)


def balance(rows: list[dict[str, Any]], size: int, concepts: list[str]) -> list[int]:
    """Pick exactly `size` row indices, as even across concepts as the survivors allow (ranked by domain score)."""
    return round_robin([r["concept"] for r in rows], [r["domain_score"] for r in rows], [r["key"] for r in rows],
                       size, concepts)


def default_clusters(size: int) -> int:
    """k for cluster balancing when params say 0: about sqrt(size), at least 2."""
    return max(2, round(math.sqrt(size)))


def cluster_labels(embeddings: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(N,) k-means cluster of every unit embedding (spherical, faiss), clusters numbered by size, largest first."""
    k = max(1, min(k, len(embeddings)))
    train = embeddings
    if len(embeddings) > k * TRAIN_PER_CLUSTER:  # faiss would subsample too: convert only the rows it trains on
        train = embeddings[np.sort(np.random.default_rng(seed).choice(len(embeddings), k * TRAIN_PER_CLUSTER,
                                                                      replace=False))]
    kmeans = faiss.Kmeans(embeddings.shape[1], k, niter=20, spherical=True, seed=seed,
                          max_points_per_centroid=TRAIN_PER_CLUSTER, min_points_per_centroid=1)
    kmeans.train(np.ascontiguousarray(train, dtype=np.float32))
    labels = assign(embeddings, kmeans.centroids)[0]  # float32 a chunk at a time: memory flat in N
    counts = np.bincount(labels, minlength=k)
    rank = np.empty(k, np.int64)
    rank[np.lexsort((np.arange(k), -counts))] = np.arange(k)
    return rank[labels]


def cluster_balance(rows: list[dict[str, Any]], embeddings: np.ndarray, size: int, k: int, seed: int = 0
                    ) -> tuple[list[int], np.ndarray]:
    """Exactly `size` indices sampled evenly across k-means clusters of the embeddings; also the labels."""
    labels = cluster_labels(embeddings, k, seed) if len(rows) else np.zeros(0, np.int64)
    log.info("balancing over %d clusters (sizes %s)", len(set(labels.tolist())), np.bincount(labels).tolist())
    picked = round_robin(labels.tolist(), [r["domain_score"] for r in rows], [r["key"] for r in rows], size,
                         sorted(set(labels.tolist())))
    return picked, labels


def source_share(rows: list[dict[str, Any]], labels: Sequence[Hashable], picked: list[int], share: float) -> list[int]:
    """Re-pick within each label (concept or cluster) so that round(len(picked) x share) of the images are
    retrieved and the rest generated, as far as the survivors allow; each label keeps its count.

    The retrieved count is split over the labels by largest remainder; a label short of one source takes the
    other's best-scored images instead. Within a source, the highest domain score (ties: key) goes first.
    """
    counts: dict[Hashable, int] = {}
    for i in picked:
        counts[labels[i]] = counts.get(labels[i], 0) + 1
    ranked: dict[tuple[Hashable, bool], list[int]] = {}
    for i in sorted(range(len(rows)), key=lambda i: (-rows[i]["domain_score"], rows[i]["key"])):
        ranked.setdefault((labels[i], rows[i]["source"] == "retrieved"), []).append(i)
    exact = {label: n * share for label, n in counts.items()}
    real = {label: math.floor(v) for label, v in exact.items()}
    spare = round(len(picked) * share) - sum(real.values())
    for label in sorted(exact, key=lambda label: (real[label] - exact[label], str(label)))[:max(0, spare)]:
        real[label] += 1
    out: list[int] = []
    for label, n in counts.items():
        retrieved, generated = ranked.get((label, True), []), ranked.get((label, False), [])
        take_real = min(real[label], len(retrieved))
        take_generated = min(n - take_real, len(generated))
        take_real = min(n - take_generated, len(retrieved))
        out += retrieved[:take_real] + generated[:take_generated]
    return sorted(out)


@dataclass(frozen=True)
class BalanceOptions:
    """What the balancers read besides the rows: k for flat clusters, the tree for hkmeans."""

    clusters: int = 0  # k for balance=clusters; 0: about sqrt(size)
    hkmeans: HKMeansConfig = field(default_factory=HKMeansConfig)


Balancer = Callable[[list[dict[str, Any]], np.ndarray, int, list[str], BalanceOptions, int],
                    tuple[list[int], np.ndarray]]


def by_concepts(rows: list[dict[str, Any]], embeddings: np.ndarray, size: int, concepts: list[str],
                options: BalanceOptions, seed: int = 0) -> tuple[list[int], np.ndarray]:
    """`balance` over concepts; no cluster labels (-1)."""
    return balance(rows, size, concepts), np.full(len(rows), -1, np.int64)


def by_clusters(rows: list[dict[str, Any]], embeddings: np.ndarray, size: int, concepts: list[str],
                options: BalanceOptions, seed: int = 0) -> tuple[list[int], np.ndarray]:
    """`cluster_balance` with k = options.clusters (0: about sqrt(size))."""
    return cluster_balance(rows, embeddings, size, options.clusters or default_clusters(size), seed)


def by_hkmeans(rows: list[dict[str, Any]], embeddings: np.ndarray, size: int, concepts: list[str],
               options: BalanceOptions, seed: int = 0) -> tuple[list[int], np.ndarray]:
    """`hkmeans_sample`: hierarchical k-means, then `r` sampling down the tree; labels are the top-level clusters."""
    picked, labels = hkmeans_sample(embeddings, size, options.hkmeans, seed)
    log.info("balanced over %d top-level clusters (sizes %s)", labels.max() + 1 if len(labels) else 0,
             np.bincount(labels).tolist() if len(labels) else [])
    return picked.tolist(), labels


BALANCERS: dict[str, Balancer] = {"concepts": by_concepts, "clusters": by_clusters, "hkmeans": by_hkmeans}
