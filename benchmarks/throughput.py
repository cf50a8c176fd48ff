"""Throughput of the real-size architectures (random weights, built from configs: nothing is downloaded), written
into benchmarks/throughput.json for `pas plan`. Prints one line per figure.

    python benchmarks/throughput.py                       # this machine: FLOPs of every model, timings that fit
    python benchmarks/throughput.py --device cuda         # on a GPU (benchmarks/gpu.sh runs this within 8 min)
    python benchmarks/throughput.py --only clip_embed     # a subset, by task or model substring

Every figure carries its FLOPs per image (counted on the meta device: no memory, no time) and, where timed, the
median images/s of a few batches on this device, with the machine and date. `pas plan` extrapolates the rest.
Each figure is saved into the table (atomically) as soon as it is measured, so a run stopped part-way keeps what
it measured; a figure that fails is saved with its error in one line and the run goes on with the others. A model
is built once and timed at each of its batch sizes.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from generate import SD1_UNET, SD2_UNET, SDXL_UNET, VAE, build_random  # noqa: E402  (sibling benchmark)
from pretrain import step_rate  # noqa: E402

from pas.core.shards import atomic_path  # noqa: E402
from pas.models.presets import recommended  # noqa: E402

TABLE = Path(__file__).parent / "throughput.json"
# (task, model, batch sizes, settings): what `pas plan` prices; each model is built once for all its batch sizes.
# Generation settings are the presets' recommendations.
SUITE: list[tuple[str, str, tuple[int, ...], dict[str, Any]]] = [
    ("generate", "sdxl-turbo", (1, 16), {}),
    ("generate", "sd-1.5", (8,), {}),
    ("generate", "tiny://sd", (16,), {}),
    ("clip_embed", "ViT-L-14", (256,), {}),
    ("clip_embed", "ViT-B-32", (256,), {}),
    ("clip_embed", "tiny://clip", (256,), {}),
    ("pretrain", "dino/vit_small_patch16_224", (64,), {"image_size": 224}),
    ("pretrain", "all4one/resnet50", (64,), {"image_size": 224}),
    ("pretrain", "simclr/resnet18", (32,), {"image_size": 64}),
    # the finetune stage's feature pass (headless backbone, eval mode): the offline default's inits at 64 px and the
    # real recipes' backbones at 224 px
    ("finetune_features", "tf_efficientnet_lite0", (64,), {"image_size": 64}),
    ("finetune_features", "resnet50", (64,), {"image_size": 224}),
    ("finetune_features", "vit_small_patch16_224", (64,), {"image_size": 224}),
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


@contextmanager
def generate_timer(model: str, device: str, seconds: float) -> Iterator[Callable[[int], float]]:
    """Build and load the pipeline once (random weights, real architecture); yield batch -> median images/s of the
    preset's recommended sampling at that batch."""
    from pas.models.tiny import build_tiny_sd
    from pas.sources.generate import Sampling, load_pipeline, render

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pipe"
        build_tiny_sd(folder) if model == "tiny://sd" else build_random(model, folder)
        pipe = load_pipeline(folder, device)
        rec = recommended(model)
        sampling = Sampling(rec["steps"], rec["guidance"], rec["resolution"], 384, 90)

        def rate(batch: int) -> float:
            jobs = [{"prompt": f"a photo of dish number {i}", "negative_prompt": "", "seed": i} for i in range(batch)]
            return _median_rate(lambda: render(pipe, jobs, sampling), batch, device, seconds)

        yield rate


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


@contextmanager
def clip_timer(model: str, device: str, seconds: float) -> Iterator[Callable[[int], float]]:
    """Build the CLIP model once; yield batch -> median images/s of image embedding on ready tensors (half precision
    on a GPU, as pas runs it)."""
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    net = clip_model(model, device).eval().to(dtype)

    def rate(batch: int) -> float:
        pixels = torch.randn(batch, 3, clip_size(net), clip_size(net), device=device, dtype=dtype)
        with torch.inference_mode():
            return _median_rate(lambda: net.encode_image(pixels), batch, device, seconds)

    yield rate


@contextmanager
def pretrain_timer(model: str, image_size: int, device: str) -> Iterator[Callable[[int], float]]:
    """Yield batch -> images/s of the method's training step (benchmarks/pretrain.py builds the step per batch)."""
    method, backbone = model.split("/")
    yield lambda batch: step_rate(method, {}, backbone, image_size, batch, 3, 1, device)["images_per_s"]


@contextmanager
def features_timer(model: str, image_size: int, device: str, seconds: float) -> Iterator[Callable[[int], float]]:
    """Yield batch -> images/s of the headless backbone's forward pass in eval mode (finetune's feature pass)."""
    import timm

    net = timm.create_model(model, num_classes=0, pretrained=False).eval().to(device)

    def rate(batch: int) -> float:
        images = torch.randn(batch, 3, image_size, image_size, device=device)
        with torch.inference_mode():
            return _median_rate(lambda: net(images), batch, device, seconds)

    yield rate


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


def gflops(task: str, model: str, settings: dict[str, Any]) -> float | None:
    """FLOPs per image of (task, model), counted on the meta device; None where not countable."""
    if task == "generate":
        return generate_gflops(model)
    if task == "clip_embed":
        with torch.device("meta"):
            net = clip_model(model, "meta")
        return counted(lambda: net.encode_image(torch.zeros(1, 3, clip_size(net), clip_size(net))))
    if task == "pretrain":
        return pretrain_gflops(model, settings["image_size"])
    if task == "finetune_features":   # counted as `pas plan` counts a backbone it has no figure for
        from pas.evaluate.costs import backbone_gflops

        flops, _, why = backbone_gflops(model, settings["image_size"], timm_eval=False)
        if flops is None:
            raise ValueError(why)
        return flops
    raise ValueError(f"unknown task {task!r}: expected generate, clip_embed, pretrain or finetune_features")


def timer(task: str, model: str, settings: dict[str, Any], device: str,
          seconds: float) -> AbstractContextManager[Callable[[int], float]]:
    """A context that builds (task, model) once and yields batch -> measured images/s."""
    if task == "generate":
        return generate_timer(model, device, seconds)
    if task == "clip_embed":
        return clip_timer(model, device, seconds)
    if task == "finetune_features":
        return features_timer(model, settings["image_size"], device, seconds)
    return pretrain_timer(model, settings["image_size"], device)


def one_line(error: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0][:300]}" if message else type(error).__name__


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


def merge(table: Path, figures: list[dict[str, Any]]) -> None:
    """Write `figures` into the table atomically, replacing those of the same (task, model, batch, device) and keeping
    the others. A figure without a rate (failed, or not timed) never replaces a measured rate: the measured figure
    stays, with the new FLOPs count and the new failure's error."""
    old = json.loads(table.read_text())["figures"] if table.is_file() else []
    key = lambda f: (f["task"], f["model"], f.get("batch"), f["device"])  # noqa: E731
    merged = {key(f): f for f in old}
    for figure in figures:
        previous = merged.get(key(figure))
        if previous and previous.get("images_per_s") and not figure.get("images_per_s"):
            kept = {name: value for name, value in previous.items() if name != "error"}
            if figure.get("gflops_per_image") is not None:
                kept["gflops_per_image"] = figure["gflops_per_image"]
            if figure.get("error"):
                kept["error"] = f"{figure['date']} on {figure['machine']}: {figure['error']}"
            figure = kept
        merged[key(figure)] = figure
    with atomic_path(table) as tmp:
        tmp.write_text(json.dumps({"figures": sorted(merged.values(), key=lambda f: tuple(map(str, key(f))))},
                                  indent=1) + "\n")


def record(table: Path, figures: list[dict[str, Any]], error: str | None, t0: float) -> int:
    """Save `figures` into the table now (failed with `error` when given), print one line each; how many."""
    for figure in figures:
        if error:
            figure["error"] = error
    merge(table, figures)
    for figure in figures:
        rate = f"{figure['images_per_s']:,.2f} img/s" if figure["images_per_s"] else "not timed"
        flops = f"{figure['gflops_per_image']:,.1f} GFLOPs/img" if figure["gflops_per_image"] else "-"
        print(f"{figure['task']:<18}{figure['model']:<28}batch {figure['batch']:>3}  "
              f"{'FAILED' if error else rate:>18}  {flops:>20}  ({time.perf_counter() - t0:.0f} s)"
              + (f"  {error}" if error else ""), flush=True)
    return len(figures)


def measure_model(table: Path, task: str, model: str, settings: dict[str, Any], figures: list[dict[str, Any]],
                  device: str, seconds: float, time_it: bool, fail: bool = False) -> int:
    """Count FLOPs, build (task, model) once and time each of its batch sizes, saving each figure as soon as it is
    measured or has failed; the number that failed. `fail` makes each timing fail (a check of that path)."""
    t0 = time.perf_counter()
    try:
        flops, flops_error = gflops(task, model, settings), None
    except Exception as error:  # noqa: BLE001  (said, and the timing goes on: it does not need the count)
        flops, flops_error = None, f"FLOPs not counted: {one_line(error)}"
        print(f"{task:<18}{model:<28}{flops_error}", flush=True)
    for figure in figures:
        figure["gflops_per_image"] = flops
    if not time_it:
        record(table, figures, flops_error, t0)
        return len(figures) if flops_error else 0
    failed = done = 0
    try:
        with timer(task, model, settings, device, seconds) as rate:
            if task != "pretrain":   # benchmarks/pretrain.py's step_rate builds its own model per batch size
                print(f"built {model} once for batch {', '.join(str(f['batch']) for f in figures)} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
            for figure in figures:
                t0, error = time.perf_counter(), None
                try:
                    if fail:
                        raise RuntimeError("injected failure (--fail)")
                    figure["images_per_s"] = rate(figure["batch"])
                except Exception as err:  # noqa: BLE001  (a batch that fails, out of memory say, keeps the others)
                    error = one_line(err)
                if error and device.startswith("cuda"):   # out of the handler: its traceback no longer holds tensors
                    torch.cuda.empty_cache()
                done += 1
                record(table, [figure], error, t0)
                failed += bool(error)
    except Exception as error:  # noqa: BLE001  (the build failed: this model's remaining figures fail with it)
        record(table, figures[done:], one_line(error), t0)
        failed += len(figures) - done
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", default=[], help="task or model substrings to run")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing per figure (median of >= 3 calls)")
    parser.add_argument("--no-timing", nargs="*", default=None,
                        help="models only counted, not timed (default on a CPU: the real-size generators and "
                             "training steps, which take minutes per batch here)")
    parser.add_argument("--batches", type=int, nargs="+", help="time these batch sizes instead of the suite's")
    parser.add_argument("--fail", nargs="*", default=[], metavar="MODEL",
                        help="make the timing of models matching these substrings fail, as a GPU error would (a "
                             "check that a failure is recorded and keeps the other figures)")
    parser.add_argument("--table", default=str(TABLE), help="the table to update (default: %(default)s)")
    args = parser.parse_args()
    untimed = args.no_timing
    if untimed is None:
        untimed = [] if args.device.startswith("cuda") else ["sdxl-turbo", "sd-1.5", "ViT-L-14", "dino/", "all4one/",
                                                                "resnet50", "vit_small"]
    table, total, failed = Path(args.table), 0, 0
    for task, model, batches, settings in SUITE:
        if args.only and not any(part in task or part in model for part in args.only):
            continue
        figures = [{"task": task, "model": model, "batch": batch, **settings, "device": device_kind(args.device),
                    "machine": machine(args.device), "date": datetime.date.today().isoformat(),
                    "gflops_per_image": None, "images_per_s": None} for batch in (args.batches or batches)]
        failed += measure_model(table, task, model, settings, figures, args.device, args.seconds,
                                time_it=not any(part in model for part in untimed),
                                fail=any(part in model for part in args.fail))
        total += len(figures)
    print(f"{total - failed} figure(s) saved, {failed} failed, for {device_kind(args.device)} "
          f"({machine(args.device)}) -> {table}")
    if failed:
        raise SystemExit(1)


def exit_on_sigterm() -> None:
    """Make SIGTERM (gpu.sh's time limit) unwind as an exit: a table write in progress is cleaned up, the figures
    saved before stay."""
    def stop(signum: int, frame: object) -> None:
        print(f"stopped by signal {signum}: the figures saved before are in the table", file=sys.stderr, flush=True)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":
    exit_on_sigterm()
    main()
