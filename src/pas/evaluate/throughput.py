"""Per-image speeds for `pas plan`: the figures of benchmarks/throughput.json (benchmarks/throughput.py, and
benchmarks/gpu.sh on a GPU machine), and the rate of a (task, model) on a device: measured there, or extrapolated
from a measured GPU by peak TFLOPs, else from the model's FLOPs at an assumed utilisation (and said so)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pas.core.config import ConfigError

# Peak dense bf16 tensor TFLOPs (vendor data sheets: H100 SXM, A100 SXM, L4) and memory; a CPU has no such peak
# worth quoting, so only figures measured on a CPU are used for it.
GPUS: dict[str, dict[str, float]] = {"h100": {"tflops": 989.0, "memory_gb": 80},
                                     "a100": {"tflops": 312.0, "memory_gb": 80},
                                     "l4": {"tflops": 121.0, "memory_gb": 24}}
DEVICES = (*GPUS, "cpu")
UTILISATION = 0.35  # assumed model-FLOPs utilisation when only FLOPs are known (stated in the output)
DEFAULT_TABLE = Path("benchmarks/throughput.json")


@dataclass(frozen=True)
class Rate:
    """Images/s of one task on one device, and where the figure comes from."""

    images_per_s: float
    how: str          # "measured on <machine>, <date>" or "extrapolated from ..."
    measured: bool


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
    if device not in GPUS or is_tiny(model):   # a tiny test model's speed is overhead, not FLOPs: never extrapolated
        return None
    for figure in mine:
        if figure["device"] in GPUS and figure.get("images_per_s"):
            ratio = GPUS[device]["tflops"] / GPUS[figure["device"]]["tflops"]
            return Rate(figure["images_per_s"] * ratio,
                        f"extrapolated from {figure['device']} ({figure['date']}) by peak TFLOPs x{ratio:.2f}", False)
    for figure in mine:
        gflops = figure.get("gflops_per_image") or 0
        if gflops > 0:
            ideal = GPUS[device]["tflops"] * 1e3 * UTILISATION / gflops
            shown = f"{gflops:,.0f}" if gflops >= 10 else f"{gflops:.2g}"
            return Rate(ideal, f"extrapolated from {shown} GFLOPs/image at {UTILISATION:.0%} of peak", False)
    return None


def input_rate(figures: list[dict[str, Any]], method: str, path: str, image_size: int) -> Rate | None:
    """Samples/s of ONE CPU core feeding `method`'s views by `path` (cpu: decode + augment in workers; device: the
    CPU work the device path leaves), from benchmarks/input_pipeline.py's figures (task "input"): the figure at
    `image_size` if measured, else the one at the nearest size. None when the table has none."""
    mine = [f for f in figures if f["task"] == "input" and f["model"] == f"{method}/{path}" and f.get("images_per_s")]
    if not mine:
        return None
    figure = min(mine, key=lambda f: (abs((f.get("image_size") or 0) - image_size), -f["images_per_s"]))
    return Rate(figure["images_per_s"], f"{path} path at {figure.get('image_size')} px, measured per core on "
                                        f"{figure['machine']}, {figure['date']}", True)


def augment_rate(figures: list[dict[str, Any]], method: str, device: str, image_size: int) -> Rate | None:
    """Samples/s of the device path's own GPU work for `method` (nvJPEG decode + the views, benchmarks/gpu.sh's
    `<method>/device-gpu` figures) on `device`, at the nearest image size measured; None without a figure there."""
    mine = [f for f in figures if f["task"] == "input" and f["model"] == f"{method}/device-gpu"
            and f["device"] == device and f.get("images_per_s")]
    if not mine:
        return None
    figure = min(mine, key=lambda f: (abs((f.get("image_size") or 0) - image_size), -f["images_per_s"]))
    return Rate(figure["images_per_s"], f"device augmentation at {figure.get('image_size')} px, batch "
                                        f"{figure.get('batch')}, measured on {figure['machine']}, {figure['date']}", True)


def is_tiny(model: str) -> bool:
    """A tiny test model (tiny://...): random weights, a speed set by overheads, no real cost to extrapolate."""
    return model.startswith("tiny://")


def no_figure(figures: list[dict[str, Any]], task: str, model: str) -> str:
    """Why a (task, model) has no rate: a tiny model is priced only where it was measured; else the table lacks it."""
    if not is_tiny(model):
        return f"no figure for {task} {model} in the throughput table"
    devices = sorted({f["device"] for f in figures if f["task"] == task and f["model"] == model
                      and f.get("images_per_s")})
    return f"no figure (tiny test model{', measured on ' + ', '.join(devices) + ' only' if devices else ''})"


def clip_arch(name: str) -> str:
    """The architecture part of a models.clip name: ViT-L-14/laion2b_s32b_b82k -> ViT-L-14; tiny://clip as is."""
    return name if name.startswith("tiny://") else name.split("/")[0].removeprefix("hf-hub:")


def clip_dim(arch: str) -> int:
    """Embedding width of a CLIP architecture, from open_clip's bundled config (pas's tiny config for tiny://clip);
    512 for a local folder or an unknown name."""
    if arch == "tiny://clip":
        from pas.models.tiny import TINY_CLIP_CONFIG

        return TINY_CLIP_CONFIG["model_cfg"]["embed_dim"]
    import open_clip   # torch and open_clip's model registry: only for a real architecture's name

    return (open_clip.get_model_config(arch) or {}).get("embed_dim", 512)


def generator_model(name: str) -> str:
    """The throughput-table name of a generator: a preset name, or the repo name of a hub id."""
    aliases = {"stabilityai/sdxl-turbo": "sdxl-turbo", "stabilityai/sd-turbo": "sd-turbo",
               "runwayml/stable-diffusion-v1-5": "sd-1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd-1.5"}
    return aliases.get(name, name)
