"""Retrieval: CLIP embedding img/s, and exact vs approximate faiss on N random-normal vectors.

    python benchmarks/retrieval.py                       # 1M x 512, the index `auto` picks, 2 threads
    python benchmarks/retrieval.py --n 100000 --index ivf_sq8

Prints build time, query time (median of 3) and recall@10 against exact search, in one run.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from pas.sources.pool_index import PoolIndexConfig, build_index, recall


def random_chunks(n: int, dim: int, chunk: int, seed: int):
    """Unit random-normal vectors, generated chunk by chunk (same vectors on every call)."""
    def chunks():
        rng = np.random.default_rng(seed)
        for start in range(0, n, chunk):
            block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
            yield block / np.linalg.norm(block, axis=1, keepdims=True)
    return chunks


def timed_search(index: faiss.Index, queries: np.ndarray, k: int, repeats: int = 3) -> tuple[float, np.ndarray]:
    """Median seconds over `repeats` searches, and the ids found."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, found = index.search(queries, k)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), found


def clip_throughput(resolution: int, images: int = 256) -> float:
    """Images/s of the tiny CLIP image tower (offline) at a resolution."""
    import torch

    from pas.models.clip import ClipEncoder
    from pas.models.tiny import build_tiny_clip

    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_clip(Path(tmp) / "clip")
        encoder = ClipEncoder(Path(tmp) / "clip")
        pixels = torch.randn(64, 3, resolution, resolution)
        encoder.encode_pixels(pixels)
        t0 = time.perf_counter()
        for _ in range(images // 64):
            encoder.encode_pixels(pixels)
        return images / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--index", default="auto")
    parser.add_argument("--memory-budget-mb", type=int, default=4096)
    parser.add_argument("--target-recall", type=float, default=0.95)
    args = parser.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; n={args.n:,} dim={args.dim}")
    print(f"tiny CLIP image tower: {clip_throughput(64):.0f} img/s at 64 px")
    chunks = random_chunks(args.n, args.dim, 100_000, seed=0)
    queries = next(random_chunks(args.queries, args.dim, args.queries, seed=1)())

    t0 = time.perf_counter()
    exact = faiss.IndexFlatIP(args.dim)
    for block in chunks():
        exact.add(block)
    exact_build = time.perf_counter() - t0
    exact_time, truth = timed_search(exact, queries, 10)
    print(f"exact (flat):  build {exact_build:6.1f} s, {args.queries} queries {exact_time:6.2f} s (median of 3)")
    del exact

    cfg = PoolIndexConfig(index=args.index, memory_budget_mb=args.memory_budget_mb, target_recall=args.target_recall)
    t0 = time.perf_counter()
    index, description = build_index(chunks, args.n, args.dim, cfg)
    build = time.perf_counter() - t0
    approx_time, found = timed_search(index, queries, 10)
    settings = {k: v for k, v in description.items() if k in ("nlist", "nprobe", "efSearch", "fallback_from")}
    kind = description["index"]
    print(f"approx ({kind}, {settings}): build+tune {build:6.1f} s, {args.queries} queries {approx_time:6.2f} s "
          f"(median of 3), recall@10 {recall(found, truth):.3f}")
    print(f"query speed-up over exact: {exact_time / approx_time:.1f}x; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
