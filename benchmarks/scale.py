"""Scale rehearsal: the real DAG (tiny models, CPU) at growing `size` in temporary copies of this repository, with
a procedurally generated pool large enough that most candidates are retrieved. Prints, per stage and size: seconds,
peak RSS and output bytes; then `dvc status` and no-op `dvc repro` times at each size, and growth ratios.

    python benchmarks/scale.py                         # sizes 2k, 10k, 50k (about an hour on 2 cores)
    python benchmarks/scale.py --sizes 2000 10000      # a quicker rehearsal

Goals: per-stage time grows at most linearly with size (n log n for dedup); peak RSS of every stage flat
(<= 1.5x from 10k to 50k) except the explicit embedding arrays; no-op `dvc repro` <= 3 s at 50k.
The pool is 2.5 x size images (parquet parts of 64 px PNGs: random shapes, every image distinct), generation makes 2%
of the candidates, and pretraining uses a small timm test backbone for one epoch at 48 px: the rehearsal measures
pas's own machinery, not a model's speed (benchmarks/throughput.py does that).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
STAGES = ["models", "concepts", "sample_data", "pool_index", "retrieve", "generate", "embed", "filter", "dedup",
          "report", "pretrain", "finetune", "evaluate"]
MEASURE = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def procedural_pool(folder: Path, count: int, seed: int, part_rows: int = 10_000) -> None:
    """`count` distinct 64 px PNGs of random coloured rectangles, as parquet parts with an image bytes column."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for part, start in enumerate(range(0, count, part_rows)):
        images = []
        for _ in range(min(part_rows, count - start)):
            array = np.zeros((64, 64, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
            for _ in range(5):
                x, y = rng.integers(0, 56, 2)
                w, h = rng.integers(4, 32, 2)
                array[y:y + h, x:x + w] = rng.integers(0, 255, 3, dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="PNG")
            images.append(buffer.getvalue())
        pq.write_table(pa.table({"image": images, "image_name": [f"p{start + i}" for i in range(len(images))]}),
                       folder / f"part-{part:04d}.parquet")


def copy_repo(dest: Path) -> None:
    """The working tree's tracked and untracked source files (no outputs, lock, cache) as a fresh git repository."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if name == "dvc.lock" or name.startswith(("metrics/", "plots/")) or not (REPO / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    subprocess.run("git init -q && git add -A && git -c user.name=s -c user.email=s@s commit -qm init", shell=True,
                   cwd=dest, check=True)


def configure(repo: Path, size: int, pool: Path) -> None:
    """params.yaml for the rehearsal: this size, the procedural pool, 2% generated, a small pretraining run."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["size"] = size
    params["mix"] = {"generated": 0.02, "retrieved": 0.98}
    params["pool_index"]["source"] = str(pool)
    params["pretrain"].update(backbone="test_resnet", image_size=48, epochs=1)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run("git -c user.name=s -c user.email=s@s commit -qam rehearsal", shell=True, cwd=repo, check=True)


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(seconds, peak RSS in GB of the largest process it ran) of a command, which must succeed."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", MEASURE, *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return seconds, int(proc.stderr.strip().splitlines()[-1]) / 2**20


def out_bytes(repo: Path) -> dict[str, int]:
    """Bytes of each stage's outputs, as dvc.lock records them."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {stage: sum(out.get("size", 0) for out in entry.get("outs", [])) for stage, entry in lock.items()}


def rehearse(size: int, root: Path, env: dict[str, str]) -> dict[str, object]:
    """Run every stage of a fresh copy at `size`; return the per-stage figures and the no-op timings."""
    repo, pool = root / f"repo-{size}", root / f"pool-{size}"
    started = time.perf_counter()
    procedural_pool(pool, int(size * 2.5), seed=size)
    print(f"[size {size:,}] pool of {int(size * 2.5):,} images written in {time.perf_counter() - started:.0f} s",
          flush=True)
    repo.mkdir()
    copy_repo(repo)
    configure(repo, size, pool)
    stages = {}
    for stage in STAGES:
        seconds, rss = timed(["dvc", "repro", "--single-item", stage], repo, env)
        stages[stage] = {"seconds": seconds, "peak_rss_gb": rss}
        print(f"[size {size:,}] {stage:<12} {seconds:8.1f} s  peak RSS {rss:5.2f} GB", flush=True)
    for stage, count in out_bytes(repo).items():
        stages.setdefault(stage, {})["out_bytes"] = count
    status, _ = timed(["dvc", "status"], repo, env)
    noop, _ = timed(["dvc", "repro"], repo, env)
    curated = pq.read_metadata(repo / "data" / "curated" / "manifest.parquet").num_rows
    shutil.rmtree(pool)
    return {"size": size, "curated": curated, "stages": stages, "dvc_status_s": status, "noop_repro_s": noop}


def report(runs: list[dict[str, object]]) -> None:
    """Per stage and size: seconds, peak RSS, output MB; then growth from the second-largest to the largest size."""
    sizes = [r["size"] for r in runs]
    print("\nstage         " + "".join(f"{f'size {s:,}':>34}" for s in sizes))
    print("              " + "".join(f"{'s':>10}{'RSS GB':>10}{'out MB':>14}" for _ in sizes))
    for stage in STAGES:
        cells = []
        for run in runs:
            figures = run["stages"][stage]
            cells.append(f"{figures['seconds']:>10.1f}{figures['peak_rss_gb']:>10.2f}"
                         f"{figures.get('out_bytes', 0) / 1e6:>14.1f}")
        print(f"{stage:<14}" + "".join(cells))
    for run in runs:
        print(f"size {run['size']:,}: curated {run['curated']:,}; dvc status {run['dvc_status_s']:.1f} s; "
              f"no-op dvc repro {run['noop_repro_s']:.1f} s")
    if len(runs) >= 2:
        small, large = runs[-2], runs[-1]
        factor = large["size"] / small["size"]
        print(f"\ngrowth from size {small['size']:,} to {large['size']:,} (x{factor:g}):")
        for stage in STAGES:
            a, b = small["stages"][stage], large["stages"][stage]
            time_ratio = b["seconds"] / max(a["seconds"], 1e-9)
            rss_ratio = b["peak_rss_gb"] / max(a["peak_rss_gb"], 1e-9)
            verdict = ("ok" if time_ratio <= factor * 1.1 else "SUPERLINEAR") + (", rss ok" if rss_ratio <= 1.5
                                                                                    else ", RSS GROWS")
            print(f"  {stage:<12} time x{time_ratio:5.2f}  peak RSS x{rss_ratio:4.2f}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10_000, 50_000])
    parser.add_argument("--folder", default=None, help="scratch folder (default: a temporary one, deleted)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "PAS_LOG_LEVEL": "WARNING",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # this env's dvc, python
    env.pop("MLFLOW_TRACKING_URI", None)
    with tempfile.TemporaryDirectory(prefix="pas-scale-", dir=args.folder) as scratch:
        runs = [rehearse(size, Path(scratch), env) for size in args.sizes]
    report(runs)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
