"""Web-scale retrieval: build the pool index of a clustered synthetic pool of precomputed embeddings within a
memory budget, then recall@10 against exact search and queries/s. Prints the figures.

    python benchmarks/webpool.py                                   # the goal: 10M x 512, 2 GB budget
    python benchmarks/webpool.py --vectors 1000000 --budget-mb 256  # a quicker rehearsal of the same path

The pool is a mixture of Gaussians on the sphere (like CLIP embeddings, not isotropic noise), written as
clip-retrieval parts (img_emb/img_emb_N.npy float16 + metadata/metadata_N.parquet) and read back through
pas.sources.embedding_pool, exactly as pool_index reads a LAION-style pool. Goal on the 2-core dev machine:
recall@10 >= 0.9, peak RSS <= 3 GB, build <= 20 min.
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pas.sources.embedding_pool import iter_blocks, open_pool, rows_of
from pas.sources.pool_index import PoolIndexConfig, build_index, exact_neighbours, recall


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux reports KB). It counts the pages of memory-mapped
    files too (the on-disk lists, the pool parts), which the kernel can drop at will."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class AnonymousPeak:
    """Samples RssAnon (memory that is not a file's page cache) twice a second; `gb` is the peak seen."""

    def __init__(self) -> None:
        self.gb, self.running = 0.0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.gb = max(self.gb, int(line.split()[1]) / 2**20)
            time.sleep(0.5)


def mixture(rng: np.random.Generator, centers: np.ndarray, count: int, spread: float) -> np.ndarray:
    """`count` unit vectors around random centres (a cosine of about 1 / sqrt(1 + spread^2) to their centre)."""
    picked = centers[rng.integers(0, len(centers), count)]
    noise = rng.normal(scale=spread / np.sqrt(centers.shape[1]), size=picked.shape).astype(np.float32)
    points = picked + noise
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def write_pool(folder: Path, vectors: int, dim: int, part_rows: int, centers: np.ndarray, seed: int) -> None:
    """The synthetic pool as clip-retrieval parts, generated 100k rows at a time (never all in memory)."""
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    rng = np.random.default_rng(seed)
    for number, start in enumerate(range(0, vectors, part_rows)):
        rows = min(part_rows, vectors - start)
        array = np.lib.format.open_memmap(folder / "img_emb" / f"img_emb_{number}.npy", mode="w+", dtype=np.float16,
                                          shape=(rows, dim))
        for offset in range(0, rows, 100_000):
            array[offset:offset + 100_000] = mixture(rng, centers, min(100_000, rows - offset), 0.8)
        array.flush()
        del array
        pq.write_table(pa.table({"url": [f"https://example.invalid/{i}.jpg" for i in range(start, start + rows)]}),
                       folder / "metadata" / f"metadata_{number}.parquet")
    (folder / "embedding_model.txt").write_text("synthetic\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=20_000, help="mixture components of the synthetic pool")
    parser.add_argument("--part-rows", type=int, default=1_000_000)
    parser.add_argument("--budget-mb", type=int, default=2048, help="pool_index.memory_budget_mb")
    parser.add_argument("--target-recall", type=float, default=0.9)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--folder", default="/tmp/pas-webpool", help="scratch folder (deleted and rewritten)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    folder = Path(args.folder)
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(args.seed)
    centers = rng.normal(size=(args.clusters, args.dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    started = time.perf_counter()
    writer = multiprocessing.Process(target=write_pool, args=(folder / "pool", args.vectors, args.dim, args.part_rows,
                                                              centers, args.seed))
    writer.start()  # in a child process, so that the peak RSS printed below is the index build's alone
    writer.join()
    written = time.perf_counter() - started

    anonymous = AnonymousPeak()
    pool = open_pool(folder / "pool")
    cfg = PoolIndexConfig(memory_budget_mb=args.budget_mb, target_recall=args.target_recall)
    started = time.perf_counter()
    index, description = build_index(lambda: iter_blocks(pool), pool.rows, pool.dim, cfg, args.seed,
                                      disk=folder / "index", rows=lambda ids: rows_of(pool, ids))
    built = time.perf_counter() - started
    rss_build, anon_build = peak_rss_gb(), anonymous.gb

    queries = mixture(np.random.default_rng(args.seed + 1), centers, args.queries, 0.8)   # held out: new draws
    truth = exact_neighbours(lambda: iter_blocks(pool), queries, 10)
    started = time.perf_counter()
    found = index.search(queries, 10)[1]
    searched = time.perf_counter() - started

    print(f"pool: {pool.rows:,} x {pool.dim} float16 in {len(pool.parts)} part(s), written in {written:.0f} s")
    print(f"index: {description['index']} nlist={description.get('nlist')} nprobe={description.get('nprobe')} "
          f"rerank={description.get('rerank', 0)} on_disk={description.get('on_disk', False)} list_bytes={description.get('list_bytes', 0) / 2**30:.2f} GB "
          f"(budget {args.budget_mb} MB)")
    print(f"build: {built:.0f} s ({built / 60:.1f} min); peak RSS during build {rss_build:.2f} GB, of which "
          f"anonymous (not file page cache) at most {anon_build:.2f} GB")
    print(f"recall@10 vs exact on {len(queries)} held-out queries: {recall(found, truth):.3f} "
          f"(tuning sample: {description['recall_at_10']:.3f}, target {args.target_recall})")
    print(f"search: {len(queries) / searched:,.0f} queries/s (batch of {len(queries)}, k=10)")
    print(f"peak RSS overall {peak_rss_gb():.2f} GB; anonymous {anonymous.gb:.2f} GB")


if __name__ == "__main__":
    main()
