"""`pas plan`: what a run will cost before it starts, per stage and in total, on a chosen GPU and count.

Per-image costs come from benchmarks/throughput.json, which benchmarks/throughput.py writes (benchmarks/gpu.sh on a
GPU machine): each figure names its task, model, settings, device, machine and date, and is either measured there
or derived from the model's FLOPs per image. A figure for another device than the one asked for is extrapolated:
from a measured GPU figure by the ratio of peak bf16 TFLOPs, else from the FLOPs at an assumed utilisation. The
table printed says which figures are measured and which are extrapolated, and how.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pas.core.config import ConfigError, PasError, load_params, top_level
from pas.sources.plan import candidate_counts
from pas.sources.pool_sources import IMAGE_SUFFIXES

# Peak dense bf16 tensor TFLOPs (vendor data sheets: H100 SXM, A100 SXM, L4) and memory; a CPU has no such peak
# worth quoting, so only figures measured on a CPU are used for it.
GPUS: dict[str, dict[str, float]] = {"h100": {"tflops": 989.0, "memory_gb": 80}, "a100": {"tflops": 312.0, "memory_gb": 80},
                                     "l4": {"tflops": 121.0, "memory_gb": 24}}
DEVICES = (*GPUS, "cpu")
UTILISATION = 0.35  # assumed model-FLOPs utilisation when only FLOPs are known (stated in the output)
JPEG_BYTES_PER_PIXEL = 0.25  # a q90 JPEG of a photo: about 2 bits a pixel (an estimate, stated in the output)
DEFAULT_TABLE = Path("benchmarks/throughput.json")


@dataclass(frozen=True)
class Rate:
    """Images/s of one task on one device, and where the figure comes from."""

    images_per_s: float
    how: str          # "measured on <machine>, <date>" or "extrapolated from ..."
    measured: bool


def override(params: dict[str, Any], assignment: str) -> None:
    """Apply a dvc-style `-S key.sub=value` (YAML value) to params in place."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"-S {assignment!r} is not key=value; use e.g. -S size=1.2M")
    node = params
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"-S {assignment!r}: {part} is not a section of params.yaml")
    node[leaf] = yaml.safe_load(raw)


def load_table(path: Path) -> list[dict[str, Any]]:
    """The figures of a throughput table (benchmarks/throughput.json)."""
    if not path.is_file():
        raise ConfigError(f"{path} not found: run `python benchmarks/throughput.py` (or benchmarks/gpu.sh) to write it")
    return json.loads(path.read_text())["figures"]


def rate(figures: list[dict[str, Any]], task: str, model: str, device: str) -> Rate | None:
    """The best figure for (task, model) on `device`: measured there; else extrapolated from a measured GPU by
    peak TFLOPs; else from FLOPs per image at UTILISATION (GPUs only). None when the table has nothing."""
    mine = sorted((f for f in figures if f["task"] == task and f["model"] == model),
                  key=lambda f: -(f.get("images_per_s") or 0))           # the best batch size first
    for figure in mine:
        if figure["device"] == device and figure.get("images_per_s"):
            return Rate(figure["images_per_s"], f"measured on {figure['machine']}, {figure['date']}, batch "
                                                f"{figure.get('batch')}", True)
    if device not in GPUS:
        return None
    for figure in mine:
        if figure["device"] in GPUS and figure.get("images_per_s"):
            ratio = GPUS[device]["tflops"] / GPUS[figure["device"]]["tflops"]
            return Rate(figure["images_per_s"] * ratio,
                        f"extrapolated from {figure['device']} ({figure['date']}) by peak TFLOPs x{ratio:.2f}", False)
    for figure in mine:
        if figure.get("gflops_per_image"):
            ideal = GPUS[device]["tflops"] * 1e3 * UTILISATION / figure["gflops_per_image"]
            return Rate(ideal, f"extrapolated from {figure['gflops_per_image']:,.0f} GFLOPs/image at "
                               f"{UTILISATION:.0%} of peak", False)
    return None


def clip_arch(name: str) -> str:
    """The architecture part of a models.clip name: ViT-L-14/laion2b_s32b_b82k -> ViT-L-14; tiny://clip as is."""
    return name if name.startswith("tiny://") else name.split("/")[0].removeprefix("hf-hub:")


def clip_dim(arch: str) -> int:
    """Embedding width of a CLIP architecture, from open_clip's bundled config (pas's tiny config for tiny://clip);
    512 for a local folder or an unknown name."""
    import open_clip

    from pas.models.tiny import TINY_CLIP_CONFIG

    if arch == "tiny://clip":
        return TINY_CLIP_CONFIG["model_cfg"]["embed_dim"]
    return (open_clip.get_model_config(arch) or {}).get("embed_dim", 512)


def generator_model(name: str) -> str:
    """The throughput-table name of a generator: a preset name, or the repo name of a hub id."""
    aliases = {"stabilityai/sdxl-turbo": "sdxl-turbo", "stabilityai/sd-turbo": "sd-turbo",
               "runwayml/stable-diffusion-v1-5": "sd-1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd-1.5"}
    return aliases.get(name, name)


def stage_work(params: dict[str, Any], pool_images: int | None) -> list[dict[str, Any]]:
    """Per stage: images processed and the (task, model) whose rate prices them, from the params alone."""
    top = top_level(params)
    counts = candidate_counts(top.size, top.oversample, top.mix)
    models = params.get("models", {})
    pretrain = params.get("pretrain", {})
    retrieve = params.get("retrieve", {})
    clip = clip_arch(str(models.get("clip", "tiny://clip")))
    epochs = int(pretrain.get("epochs", 1))
    downloads = math.ceil(counts["retrieved"] * (1 + float(retrieve.get("download_margin", 0.0))))
    return [
        {"stage": "generate", "images": counts["generated"], "task": "generate",
         "model": generator_model(str(models.get("generator", "tiny://sd")))},
        {"stage": "pool_index", "images": pool_images, "task": "clip_embed", "model": clip,
         "note": "precomputed embeddings: no GPU work" if pool_images == 0 else None},
        {"stage": "retrieve", "images": downloads, "task": None, "model": None,
         "note": "downloads only the hits (network-bound, no GPU)"},
        {"stage": "embed", "images": counts["generated"], "task": "clip_embed", "model": clip,
         "note": "retrieved images reuse their pool vectors"},
        {"stage": "pretrain", "images": top.size * epochs, "task": "pretrain",
         "model": f"{pretrain.get('method', 'simclr')}/{pretrain.get('backbone', 'resnet18')}",
         "note": f"{epochs} epoch(s) of {top.size:,} images"},
    ]


def disk_gb(params: dict[str, Any], pool_images: int | None) -> dict[str, float]:
    """Estimated disk: image shards (JPEG), CLIP embeddings (float16), the pool's chunks + index."""
    top = top_level(params)
    counts = candidate_counts(top.size, top.oversample, top.mix)
    side = int(params.get("generate", {}).get("output_size", 64))
    dim = clip_dim(clip_arch(str(params.get("models", {}).get("clip", "tiny://clip"))))
    shards = (counts["generated"] + counts["retrieved"]) * side * side * JPEG_BYTES_PER_PIXEL
    embeddings = (counts["generated"] + counts["retrieved"]) * dim * 2
    pool = (pool_images or 0) * (dim * 2 + dim + 8)
    return {"shards": shards / 1e9, "embeddings": embeddings / 1e9, "pool_index": pool / 1e9}


def pool_size(source: str) -> int | None:
    """Images pool_index would embed: 0 for a pool of precomputed embeddings, the files of a local folder (by name,
    nothing decoded), None when the pool is not here."""
    from pas.sources.embedding_pool import is_embedding_pool

    path = Path(source)
    if not path.exists():
        return None
    if is_embedding_pool(path):
        return 0
    return sum(1 for f in (path.rglob("*") if path.is_dir() else [path]) if f.suffix.lower() in IMAGE_SUFFIXES)


def plan(params: dict[str, Any], figures: list[dict[str, Any]], device: str, gpus: int,
         pool_images: int | None) -> dict[str, Any]:
    """Per-stage images, GPU-hours (device-hours on a CPU), wall hours on `gpus` devices and the figure used."""
    rows = []
    for work in stage_work(params, pool_images):
        row = {**work, "device_hours": None, "wall_hours": None, "rate": None}
        if work["task"] and work["images"]:
            found = rate(figures, work["task"], work["model"], device)
            if found is not None:
                hours = work["images"] / found.images_per_s / 3600
                row.update(device_hours=hours, wall_hours=hours / gpus, rate=found)
            else:
                row["note"] = f"no figure for {work['task']} {work['model']} in the throughput table"
        elif work["images"] is None:
            row["note"] = "pool size unknown: pass --pool-images N"
        rows.append(row)
    priced = [r for r in rows if r["device_hours"] is not None]
    return {"rows": rows, "device_hours": sum(r["device_hours"] for r in priced),
            "wall_hours": sum(r["wall_hours"] for r in priced), "disk_gb": disk_gb(params, pool_images),
            "unpriced": [r["stage"] for r in rows if r["task"] and r["images"] and r["device_hours"] is None]}


def _hours(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}" if value >= 1 else f"{value:.3g}"


def render(result: dict[str, Any], device: str, gpus: int) -> str:
    """The plan as a terminal table plus the total and the provenance of every figure."""
    unit = "GPU-h" if device in GPUS else "CPU-h"
    lines = [f"{'stage':<11}{'images':>14}{unit:>11}{f'wall h on {gpus}':>14}  figure"]
    for row in result["rows"]:
        images = "?" if row["images"] is None else f"{row['images']:,}"
        source = row["rate"]
        figure = (f"{source.images_per_s:,.1f} img/s, {'measured' if source.measured else 'EXTRAPOLATED'}"
                  if source else (row.get("note") or ""))
        lines.append(f"{row['stage']:<11}{images:>14}{_hours(row['device_hours']):>11}{_hours(row['wall_hours']):>14}"
                     f"  {figure}")
    lines.append(f"{'total':<11}{'':>14}{_hours(result['device_hours']):>11}{_hours(result['wall_hours']):>14}"
                 + (f"  (not priced: {', '.join(result['unpriced'])})" if result["unpriced"] else ""))
    disk = result["disk_gb"]
    lines.append(f"disk: shards {disk['shards']:,.1f} GB (JPEG at ~{JPEG_BYTES_PER_PIXEL} B/pixel, an estimate), "
                 f"embeddings {disk['embeddings']:,.1f} GB, pool chunks + index {disk['pool_index']:,.1f} GB")
    lines.append("figures:")
    for row in result["rows"]:
        if row["rate"]:
            lines.append(f"  {row['stage']}: {row['task']} {row['model']} on {device}: {row['rate'].how}")
    lines.append(f"wall time assumes the {gpus} device(s) share every stage evenly (Ray actors, DDP ranks).")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`pas plan`: print the cost of the current params (with -S overrides) on a hardware profile."""
    parser = argparse.ArgumentParser(prog="pas plan", description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, as dvc exp run -S does (e.g. -S size=1.2M)")
    parser.add_argument("--gpu", default="h100", help=f"hardware profile: {', '.join(DEVICES)}")
    parser.add_argument("--gpus", type=int, default=1, help="devices working in parallel")
    parser.add_argument("--pool-images", type=int, default=None,
                        help="images in the unlabeled pool to embed (0: a pool of precomputed embeddings)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--table", default=str(DEFAULT_TABLE), help="throughput table (benchmarks/throughput.py)")
    args = parser.parse_args(argv)
    try:
        if args.gpu not in DEVICES:
            raise ConfigError(f"--gpu {args.gpu!r} is not a known profile; use one of {', '.join(DEVICES)}")
        if args.gpus < 1:
            raise ConfigError(f"--gpus {args.gpus} must be at least 1")
        if args.pool_images is not None and args.pool_images < 0:
            raise ConfigError(f"--pool-images {args.pool_images} must be 0 or more")
        params = load_params(args.params)
        for assignment in args.set_param:
            override(params, assignment)
        pool = args.pool_images
        if pool is None:
            pool = pool_size(str(params.get("pool_index", {}).get("source", "data/pool")))
        result = plan(params, load_table(Path(args.table)), args.gpu, args.gpus, pool)
    except PasError as err:
        print(f"pas plan: error: {err}", file=sys.stderr)
        return 2
    print(render(result, args.gpu, args.gpus))
    return 0
