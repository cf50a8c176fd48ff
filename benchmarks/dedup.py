"""Dedup at scale: 1M x 512 float16 embeddings with planted near-duplicates, scalable path vs exact reference.

    python benchmarks/dedup.py                        # 1M rows, exact reference on a 100k subset
    python benchmarks/dedup.py --rows 200k --subset 20k

Data: unit vectors around 2,000 random cluster centres (cosine ~0.5 inside a cluster, so the background
has no pair near the threshold), plus planted groups of 2-4 near-copies of a random row (cosine
0.955-0.995 to it) and as many near-miss pairs (cosine 0.86-0.93, which must NOT be reported). The
truth is every planted pair whose exact cosine is >= threshold. For each path it prints wall time,
the peak resident memory of the process during the run (the input itself is included), precision and
recall of the planted pairs and the share of planted groups recovered as one duplicate group.

1. the scalable path (`index: auto`, which picks IVF at this size) on all rows;
2. the exact path on a subset made of whole planted groups plus background rows (the reference), and
   the scalable path on the same subset, compared with it pair for pair.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil

from pas.core.config import parse_size
from pas.curation.duplicates import find_duplicates
from pas.curation.neighbors import SearchConfig


def make_embeddings(rows: int, dim: int, groups: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(rows, dim) float16 unit vectors and the planted groups (arrays of row indices)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((rows, dim), np.float16)
    for start in range(0, rows, 65536):  # (B, D) blocks keep the peak low
        block = centres[rng.integers(0, len(centres), min(65536, rows - start))]
        block = block + rng.standard_normal(block.shape, dtype=np.float32) / np.sqrt(dim)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    sizes = rng.integers(2, 5, groups)
    members = rng.permutation(rows)[: sizes.sum() + 2 * groups]
    planted = np.split(members[: sizes.sum()], np.cumsum(sizes)[:-1])
    for group in planted:
        _copies(out, group[0], group[1:], (0.955, 0.995), rng)
    for a, b in members[sizes.sum() :].reshape(-1, 2):  # near misses: below the threshold on purpose
        _copies(out, a, np.array([b]), (0.86, 0.93), rng)
    return out, planted


def _copies(x: np.ndarray, source: int, targets: np.ndarray, cosine: tuple[float, float],
            rng: np.random.Generator) -> None:
    """Overwrite rows `targets` with unit vectors at a random cosine in `cosine` to row `source`."""
    anchor = x[source].astype(np.float32)
    for t in targets:
        noise = rng.standard_normal(len(anchor)).astype(np.float32)
        noise -= (noise @ anchor) * anchor
        cos = rng.uniform(*cosine)
        v = anchor + np.sqrt(1.0 / cos**2 - 1.0) * noise / np.linalg.norm(noise)
        x[t] = v / np.linalg.norm(v)


def truth_pairs(x: np.ndarray, groups: list[np.ndarray], threshold: float) -> set[tuple[int, int]]:
    """Planted pairs whose exact cosine (of the stored float16 vectors) is >= threshold."""
    pairs = set()
    for group in groups:
        g = np.sort(group)
        v = x[g].astype(np.float32)
        sims = v @ v.T
        for a in range(len(g)):
            for b in range(a + 1, len(g)):
                if sims[a, b] >= threshold:
                    pairs.add((int(g[a]), int(g[b])))
    return pairs


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, peak RSS in GB while it ran), RSS sampled every 20 ms."""
    proc, done = psutil.Process(), threading.Event()
    peak = [proc.memory_info().rss]

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], proc.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        wall = time.perf_counter() - start
        done.set()
        thread.join()
    return result, wall, max(peak[0], proc.memory_info().rss) / 1e9


def score(found: set[tuple[int, int]], truth: set[tuple[int, int]]) -> tuple[float, float]:
    """(precision, recall) of found pairs against the truth."""
    hit = len(found & truth)
    return hit / max(len(found), 1), hit / max(len(truth), 1)


def run_path(name: str, x: np.ndarray, threshold: float, cfg: SearchConfig, truth: set[tuple[int, int]],
             groups: list[np.ndarray], index: np.ndarray | None = None) -> dict[str, Any]:
    """Dedup `x` (rows of the full set given by `index`), report timing, memory and planted-pair scores."""
    dups, wall, peak = measured(lambda: find_duplicates(x, [""] * len(x), threshold, search=cfg))
    ids = np.arange(len(x)) if index is None else index
    found = set(zip(ids[dups.pairs.queries].tolist(), ids[dups.pairs.base].tolist()))
    found = {(min(a, b), max(a, b)) for a, b in found}
    precision, recall = score(found, truth)
    position = {int(r): i for i, r in enumerate(ids)}
    whole = sum(len({dups.groups[position[int(m)]] for m in g}) == 1 for g in groups)
    return {"path": name, "method": dups.method, "rows": len(x), "wall_s": round(wall, 1),
            "peak_rss_gb": round(peak, 2),
            "pairs_found": len(found), "pairs_true": len(truth), "precision": round(precision, 5),
            "recall": round(recall, 5), "groups_recovered": round(whole / max(len(groups), 1), 5), "_found": found}


def main() -> None:
    """Run the benchmark and print one line per path plus a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1M")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--groups", type=int, default=10_000, help="planted near-duplicate groups")
    parser.add_argument("--subset", default="100k", help="rows of the exact reference run (0: skip)")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows, subset = parse_size(args.rows, "--rows"), parse_size(args.subset, "--subset") if args.subset != "0" else 0
    cfg = SearchConfig()  # the defaults of params.dedup

    t0 = time.perf_counter()
    x, groups = make_embeddings(rows, args.dim, args.groups, args.seed)
    truth = truth_pairs(x, groups, args.threshold)
    print(f"data: {rows:,} x {args.dim} float16 ({x.nbytes / 1e9:.2f} GB), {len(groups):,} planted groups, "
          f"{len(truth):,} planted pairs >= {args.threshold}, {args.groups:,} near-miss pairs; "
          f"built in {time.perf_counter() - t0:.0f} s; {os.cpu_count()} CPUs", flush=True)
    results = [run_path("scalable", x, args.threshold, cfg, truth, groups)]
    _print(results[-1])

    if subset:
        rng = np.random.default_rng(args.seed + 1)
        chosen = [g for g in groups if rng.random() < 0.5 * subset / rows]
        inside = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
        rest = np.setdiff1d(rng.choice(rows, min(rows, subset + len(inside)), replace=False), inside)
        index = np.sort(np.concatenate([inside, rest[: subset - len(inside)]]))
        members = set(index.tolist())
        sub, sub_truth = x[index], {p for p in truth if p[0] in members and p[1] in members}
        reference = run_path("exact", sub, args.threshold, SearchConfig(index="exact"), sub_truth, chosen, index)
        _print(reference)
        scalable = run_path("scalable", sub, args.threshold, cfg, sub_truth, chosen, index)
        precision, recall = score(scalable["_found"], reference["_found"])
        scalable.update(vs_exact_precision=round(precision, 5), vs_exact_recall=round(recall, 5),
                        speedup=round(reference["wall_s"] / max(scalable["wall_s"], 1e-9), 1))
        _print(scalable)
        results += [reference, scalable]
    print(json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in results]))


def _print(r: dict[str, Any]) -> None:
    extra = "".join(f" {k}={r[k]}" for k in ("vs_exact_precision", "vs_exact_recall", "speedup") if k in r)
    print(f"{r['path']:>8} ({r['method']}) rows={r['rows']:,} wall={r['wall_s']}s peak_rss={r['peak_rss_gb']}GB "
          f"pairs={r['pairs_found']:,}/{r['pairs_true']:,} precision={r['precision']} recall={r['recall']} "
          f"groups_recovered={r['groups_recovered']}{extra}", flush=True)


if __name__ == "__main__":
    main()
