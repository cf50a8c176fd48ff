"""Balancing a long tail: per-concept, flat k-means and hierarchical k-means (dedup.balance), side by side.

    python benchmarks/balance.py            # the ring toy, then 1M x 512 (3 levels, 10,000 sampled): minutes
    python benchmarks/balance.py --quick    # the ring toy, then 50k x 64 (1,000 sampled): a smoke test, ~30 s

Two data sets, each with known modes:
- the ring toy of facebookresearch/ssl-data-curation's README ("On small data", its `make_ring` and the five
  rings of 20,000 / 200 / 1,000 / 500 / 8,000 points; sample 1,000). pas balances unit CLIP embeddings, so the
  2-D points are lifted onto the unit sphere as (x, y, 10) / norm: distances shrink about tenfold, uniformly, and
  the clusters stay the same. The toy has no concepts: per-concept balancing sees one concept.
- a long-tailed mixture: 100 Gaussian modes on the unit sphere with Zipf sizes (mode i holds ~1/i of the
  points), grouped at random into 10 concepts (a concept = one retrieval query, which finds a head mode
  and a tail of rarer ones around it). Stored float16, as pas stores embeddings.

For each method: the share of modes with at least one sampled point, the KL divergence of the sampled mode
distribution from uniform over the modes (0 = perfectly even; log(modes) = one mode only), wall seconds and the
peak resident memory of a process that holds the data and runs the method (each method runs in its own forked
process: its peak counts the pages it touches, the data included once read). Scores (domain_score) are random,
so within a group the concept and flat balancers take a random sample, as they take the best-scored one in a run.

On the 2-core build machine under other load (2026-12-07), 1M x 512: KL from uniform 0.537 per-concept, 0.759 flat
k-means, 0.023 hkmeans (3 levels: 2,500 / 500 / 100 clusters) in 292 s and 1.47 GB peak; every method covered
all 100 modes. hkmeans evens out modes at the scale of its top-level clusters: with twice as many modes as
top-level clusters (--quick with 200 modes) it is only a little better than per-concept (KL 0.46 vs 0.53).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pas.curation.balance import balance, cluster_balance, default_clusters
from pas.curation.hkmeans import HKMeansConfig, hkmeans_sample

RINGS = ((20_000, (-2.2, 1.0)), (200, (0.0, 1.0)), (1_000, (2.2, 1.0)), (500, (-1.2, 0.2)), (8_000, (1.2, 0.2)))


def rings(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The README's five rings (radii 0.7-1.0) lifted onto the unit sphere; (points, mode, concept) per point."""
    rng = np.random.default_rng(seed)
    parts = []
    for n, centre in RINGS:
        r, alpha = rng.uniform(0.7, 1.0, n), rng.uniform(0, 2 * np.pi, n)
        parts.append(np.stack([r * np.cos(alpha), r * np.sin(alpha)], 1) + centre)
    flat = np.concatenate(parts)
    x = np.concatenate([flat, np.full((len(flat), 1), 10.0)], 1)
    mode = np.repeat(np.arange(len(RINGS)), [n for n, _ in RINGS])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), mode, np.zeros(len(x), np.int64)


def mixture(n: int, dim: int, modes: int, concepts: int, seed: int, chunk: int = 65_536
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, dim) float16 unit vectors: Zipf-sized modes around concept centres; (points, mode, concept)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, modes + 1)
    sizes = np.floor(n * weights / weights.sum()).astype(np.int64)
    sizes[: n - sizes.sum()] += 1
    concept_of = rng.permutation(np.arange(modes) % concepts)       # each concept: a head and a tail of modes
    centres = rng.standard_normal((concepts, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    offsets = rng.standard_normal((modes, dim))
    offsets /= np.linalg.norm(offsets, axis=1, keepdims=True)
    means = centres[concept_of] + 0.7 * offsets                      # modes of a concept ~0.8 apart
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    mode = rng.permutation(np.repeat(np.arange(modes), sizes))
    x = np.empty((n, dim), np.float16)
    for start in range(0, n, chunk):                                 # float32 a chunk at a time
        m = mode[start:start + chunk]
        block = means[m] + (0.3 / np.sqrt(dim)) * rng.standard_normal((len(m), dim))
        x[start:start + chunk] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x, mode, concept_of[mode]


def _rows(concept: np.ndarray, seed: int) -> list[dict[str, Any]]:
    scores = np.random.default_rng(seed).random(len(concept))
    return [{"key": f"k{i:08d}", "concept": f"c{c}", "domain_score": float(s)}
            for i, (c, s) in enumerate(zip(concept.tolist(), scores.tolist()))]


def per_concept(x: np.ndarray, concept: np.ndarray, size: int, levels: int, seed: int) -> np.ndarray:
    """dedup.balance=concepts."""
    rows = _rows(concept, seed)
    return np.asarray(balance(rows, size, sorted({r["concept"] for r in rows})))


def flat_kmeans(x: np.ndarray, concept: np.ndarray, size: int, levels: int, seed: int) -> np.ndarray:
    """dedup.balance=clusters, k = sqrt(size) (dedup.clusters: 0)."""
    return np.asarray(cluster_balance(_rows(concept, seed), x, size, default_clusters(size), seed)[0])


def hkmeans(x: np.ndarray, concept: np.ndarray, size: int, levels: int, seed: int) -> np.ndarray:
    """dedup.balance=hkmeans with `levels` levels, every other setting the official default."""
    return hkmeans_sample(x, size, HKMeansConfig(levels=levels), seed)[0]


METHODS: dict[str, Callable[..., np.ndarray]] = {"per-concept": per_concept, "flat k-means": flat_kmeans,
                                                  "hkmeans": hkmeans}


def kl_from_uniform(picked_modes: np.ndarray, modes: int) -> float:
    """KL(p || uniform) of the sampled mode distribution p, in nats: log(modes) - H(p)."""
    p = np.bincount(picked_modes, minlength=modes) / len(picked_modes)
    p = p[p > 0]
    return float(np.log(modes) + (p * np.log(p)).sum())


def _measure(method: str, data: tuple[np.ndarray, np.ndarray, np.ndarray], size: int, levels: int, seed: int,
             out: Any) -> None:
    """In a forked child: run one method, send (modes covered, KL, seconds, peak RSS GB, picked) back."""
    x, mode, concept = data
    start = time.perf_counter()
    picked = METHODS[method](x, concept, size, levels, seed)
    seconds = time.perf_counter() - start
    modes = int(mode.max()) + 1
    assert len(picked) == size == len(np.unique(picked)), (method, len(picked))
    covered = len(np.unique(mode[picked])) / modes
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB -> GiB
    out.send((covered, kl_from_uniform(mode[picked], modes), seconds, peak))
    out.close()


def compare(name: str, data: tuple[np.ndarray, np.ndarray, np.ndarray], size: int, levels: int, seed: int
            ) -> dict[str, tuple[float, float, float, float]]:
    """Every method on one data set, each in its own forked process; a table row per method."""
    ctx = mp.get_context("fork")
    results = {}
    for method in METHODS:
        here, there = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_measure, args=(method, data, size, levels, seed, there))
        child.start()
        there.close()
        results[method] = here.recv()
        child.join()
    modes = int(data[1].max()) + 1
    print(f"\n{name}: {len(data[0]):,} x {data[0].shape[1]} ({data[0].dtype}), {modes} modes, "
          f"{int(data[2].max()) + 1} concepts, sample {size:,}; hkmeans {levels} levels")
    print(f"  {'method':<14}{'modes covered':>15}{'KL vs uniform':>15}{'seconds':>10}{'peak RSS GB':>13}")
    for method, (covered, kl, seconds, peak) in results.items():
        print(f"  {method:<14}{100 * covered:>14.1f}%{kl:>15.3f}{seconds:>10.1f}{peak:>13.2f}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 50k x 64 mixture instead of 1M x 512")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n, dim, modes, concepts, size = (50_000, 64, 100, 10, 1_000) if args.quick else (1_000_000, 512, 100, 10, 10_000)
    toy = compare("ring toy (ssl-data-curation README)", rings(args.seed), 1_000, 2, args.seed)
    start = time.perf_counter()
    data = mixture(n, dim, modes, concepts, args.seed)
    print(f"\n(mixture generated in {time.perf_counter() - start:.0f} s)")
    big = compare("long-tailed mixture", data, size, 3, args.seed)
    best = min(toy, key=lambda m: toy[m][1])
    print(f"\nring toy: hkmeans covers {100 * toy['hkmeans'][0]:.0f}% of the rings; lowest KL: {best}."
          f" Mixture: lowest KL: {min(big, key=lambda m: big[m][1])}; hkmeans {big['hkmeans'][2]:.0f} s, "
          f"{big['hkmeans'][3]:.2f} GB peak.")


if __name__ == "__main__":
    main()
