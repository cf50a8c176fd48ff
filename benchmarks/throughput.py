"""Throughput of the real-size architectures (random weights, built from configs: nothing is downloaded), written
into benchmarks/throughput.json for `pas plan`. Prints one line per figure.

    python benchmarks/throughput.py                       # this machine: FLOPs of every model, timings that fit
    python benchmarks/throughput.py --device cuda         # on a GPU (benchmarks/gpu.sh runs this within 8 min)
    python benchmarks/throughput.py --only clip_embed     # a subset, by task or model substring

Every figure carries its FLOPs per image (counted on the meta device: no memory, no time) and, where timed, the
median images/s of a few batches on this device, with the machine and date. `pas plan` extrapolates the rest.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from generate import SD1_UNET, SD2_UNET, SDXL_UNET, VAE, build_random  # noqa: E402  (sibling benchmark)
from pretrain import step_rate  # noqa: E402

from pas.core.shards import atomic_path  # noqa: E402
from pas.models.presets import recommended  # noqa: E402

TABLE = Path(__file__).parent / "throughput.json"
# (task, model, settings): what `pas plan` prices. Generation settings are the presets' recommendations.
SUITE = [
    ("generate", "sdxl-turbo", {"batch": 1}),
    ("generate", "sdxl-turbo", {"batch": 16}),
    ("generate", "sd-1.5", {"batch": 8}),
    ("generate", "tiny://sd", {"batch": 16}),
    ("clip_embed", "ViT-L-14", {"batch": 256}),
    ("clip_embed", "ViT-B-32", {"batch": 256}),
    ("clip_embed", "tiny://clip", {"batch": 256}),
    ("pretrain", "dino/vit_small_patch16_224", {"batch": 64, "image_size": 224}),
    ("pretrain", "all4one/resnet50", {"batch": 64, "image_size": 224}),
    ("pretrain", "simclr/resnet18", {"batch": 32, "image_size": 64}),
]
UNETS = {"sdxl-turbo": (SDXL_UNET, 2048, True), "sd-turbo": (SD2_UNET, 1024, False), "sd-1.5": (SD1_UNET, 768, False)}


def machine(device: str) -> str:
    """A short description of the device that produced a figure."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def counted(run: Callable[[], object]) -> float:
    """GFLOPs of one call (torch's FLOP counter: 2 per multiply-add) on meta tensors."""
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / 1e9


def generate_gflops(model: str) -> float | None:
    """GFLOPs of one image: the UNet at the preset's steps (x2 with classifier-free guidance) + the VAE decoder."""
    if model not in UNETS:
        return None
    from diffusers import AutoencoderKL, UNet2DConditionModel

    config, context, xl = UNETS[model]
    rec = recommended(model)
    latent = rec["resolution"] // 8
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**config), AutoencoderKL(**VAE)
    extra = {"added_cond_kwargs": {"text_embeds": torch.zeros(1, 1280, device="meta"),
                                   "time_ids": torch.zeros(1, 6, device="meta")}} if xl else {}
    step = counted(lambda: unet(torch.zeros(1, 4, latent, latent), torch.tensor([999]),
                                encoder_hidden_states=torch.zeros(1, 77, context), **extra))
    decode = counted(lambda: vae.decode(torch.zeros(1, 4, latent, latent)))
    return step * rec["steps"] * (2 if rec["guidance"] > 1 else 1) + decode


def time_generate(model: str, batch: int, device: str, seconds: float) -> float:
    """Median images/s of the preset's recommended sampling at `batch` (random weights, real architecture)."""
    from pas.models.tiny import build_tiny_sd
    from pas.sources.generate import Sampling, load_pipeline, render

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pipe"
        build_tiny_sd(folder) if model == "tiny://sd" else build_random(model, folder)
        pipe = load_pipeline(folder, device)
        rec = recommended(model)
        sampling = Sampling(rec["steps"], rec["guidance"], rec["resolution"], 384, 90)
        jobs = [{"prompt": f"a photo of dish number {i}", "negative_prompt": "", "seed": i} for i in range(batch)]
        return _median_rate(lambda: render(pipe, jobs, sampling), batch, device, seconds)


def clip_model(model: str, device: str) -> torch.nn.Module:
    """The open_clip architecture with random weights (tiny://clip: pas's own tiny config)."""
    import open_clip

    if model == "tiny://clip":
        from pas.models.tiny import TINY_CLIP_CONFIG

        return open_clip.CLIP(**TINY_CLIP_CONFIG["model_cfg"]).to(device)
    return open_clip.create_model(model, pretrained=None, device=device)


def clip_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else size


def time_clip(model: str, batch: int, device: str, seconds: float) -> float:
    """Median images/s of CLIP image embedding on ready tensors (half precision on a GPU, as pas runs it)."""
    net = clip_model(model, device).eval()
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    net = net.to(dtype)
    pixels = torch.randn(batch, 3, clip_size(net), clip_size(net), device=device, dtype=dtype)
    with torch.inference_mode():
        return _median_rate(lambda: net.encode_image(pixels), batch, device, seconds)


def _median_rate(run: Callable[[], object], batch: int, device: str, seconds: float) -> float:
    """Warm up once, then time calls until `seconds` have passed (at least 3); median images/s."""
    run()
    rates, start = [], time.perf_counter()
    while len(rates) < 3 or time.perf_counter() - start < seconds:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rates.append(batch / (time.perf_counter() - t0))
        if len(rates) >= 3 and time.perf_counter() - start > seconds:
            break
    return statistics.median(rates)


def measure(task: str, model: str, settings: dict, device: str, seconds: float, time_it: bool) -> dict:
    """One table figure: FLOPs per image (when countable) and, with `time_it`, measured images/s."""
    figure = {"task": task, "model": model, **settings, "device": device_kind(device), "machine": machine(device),
              "date": datetime.date.today().isoformat(), "gflops_per_image": None, "images_per_s": None}
    if task == "generate":
        figure["gflops_per_image"] = generate_gflops(model)
        if time_it:
            figure["images_per_s"] = time_generate(model, settings["batch"], device, seconds)
    elif task == "clip_embed":
        with torch.device("meta"):
            net = clip_model(model, "meta")
        figure["gflops_per_image"] = counted(lambda: net.encode_image(torch.zeros(1, 3, clip_size(net), clip_size(net))))
        if time_it:
            figure["images_per_s"] = time_clip(model, settings["batch"], device, seconds)
    elif task == "pretrain":
        figure["gflops_per_image"] = pretrain_gflops(model, settings["image_size"])
        if not time_it:
            return figure
        method, backbone = model.split("/")
        result = step_rate(method, {}, backbone, settings["image_size"], settings["batch"], 3, 1, device)
        figure["images_per_s"] = result["images_per_s"]
    return figure


def pretrain_gflops(model: str, image_size: int) -> float:
    """GFLOPs of one image in a training step: the backbone's forward + backward at each of the method's view sizes,
    plus one forward per global view for methods with an EMA teacher (heads left out: a slight underestimate)."""
    import numpy as np
    import timm
    from PIL import Image

    from pas.ssl import get_method, method_args

    method, backbone = model.split("/")
    cls = get_method(method)
    args = method_args(method, {}, f"pretrain.method_args.{method}")
    image = Image.fromarray(np.zeros((image_size, image_size, 3), np.uint8))
    sizes = [transform(image).shape[-1] for transform in cls.view_transforms(args, image_size)]
    with torch.device("meta"):
        net = timm.create_model(backbone, num_classes=0, **({"dynamic_img_size": True} if "vit" in backbone else {}))
    total = 0.0
    for size in sizes:
        total += counted(lambda: net(torch.zeros(1, 3, size, size)).sum().backward())
    if method in ("dino", "all4one", "byol"):
        total += sum(counted(lambda: net(torch.zeros(1, 3, size, size))) for size in sizes if size == image_size)
    return total


def device_kind(device: str) -> str:
    """The profile name `pas plan --gpu` uses: h100, a100, l4 (from the GPU's name) or cpu."""
    if not device.startswith("cuda"):
        return "cpu"
    name = torch.cuda.get_device_name().lower()
    return next((kind for kind in ("h100", "h200", "a100", "l4") if kind in name), name.replace(" ", "-"))


def merge(table: Path, figures: list[dict]) -> None:
    """Replace the figures of the same (task, model, batch, device) in the table; keep the others."""
    old = json.loads(table.read_text())["figures"] if table.is_file() else []
    key = lambda f: (f["task"], f["model"], f.get("batch"), f["device"])  # noqa: E731
    new = {key(f) for f in figures}
    kept = [f for f in old if key(f) not in new]
    with atomic_path(table) as tmp:
        tmp.write_text(json.dumps({"figures": sorted(kept + figures, key=lambda f: tuple(map(str, key(f))))},
                                  indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", default=[], help="task or model substrings to run")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per figure (median of >= 3 calls)")
    parser.add_argument("--no-timing", nargs="*", default=None,
                        help="models only counted, not timed (default on a CPU: the real-size generators and "
                             "training steps, which take minutes per batch here)")
    parser.add_argument("--table", default=str(TABLE))
    args = parser.parse_args()
    untimed = args.no_timing
    if untimed is None:
        untimed = [] if args.device.startswith("cuda") else ["sdxl-turbo", "sd-1.5", "ViT-L-14", "dino/", "all4one/"]
    figures = []
    for task, model, settings in SUITE:
        if args.only and not any(part in task or part in model for part in args.only):
            continue
        time_it = not any(part in model for part in untimed)
        t0 = time.perf_counter()
        figure = measure(task, model, settings, args.device, args.seconds, time_it)
        figures.append(figure)
        rate = f"{figure['images_per_s']:,.2f} img/s" if figure["images_per_s"] else "not timed"
        flops = f"{figure['gflops_per_image']:,.1f} GFLOPs/img" if figure["gflops_per_image"] else "-"
        print(f"{task:<11}{model:<28}batch {settings['batch']:>3}  {rate:>18}  {flops:>20}  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    merge(Path(args.table), figures)
    print(f"{len(figures)} figure(s) for {device_kind(args.device)} ({machine(args.device)}) -> {args.table}")


if __name__ == "__main__":
    main()
