"""Input pipeline speed per CPU core: each method's views from real JPEG tar shards (read + decode + augment + collate).

    python benchmarks/input_pipeline.py                    # 224 px, prints the table
    python benchmarks/input_pipeline.py --write            # and saves the figures (task "input") for `pas plan`
    python benchmarks/input_pipeline.py --device cuda --write   # the device path's own rate on the GPU (gpu.sh)

Shards: the photos packaged with scikit-image (astronaut, coffee, chelsea, rocket, ...; flipped or rotated copies
beyond the eight) resized to 500 px on the longer side,
JPEG q90, in WebDataset tars as the curated set stores them. One thread in one process, as a DataLoader worker runs
(torch.set_num_threads(1)), timed in CPU seconds of the process (time.process_time), so other programs on the
machine do not count; every figure is the median of `--repeats` passes, the official DINO's over `--repeats` passes
plus one before each method's (the machine's load changes during a run; the ratios compare like with like).

Columns: the CPU path (pas.ssl.augment: OpenCV's decode at a reduced scale where the crops allow, OpenCV on uint8
with one thread (cv2.setNumThreads(1)), the device normalises); the CPU work the
device path leaves (read the member, parse the JPEG header, draw the views, collate the bytes and draws:
pas.ssl.gpu_augment decodes and augments on the GPU); and the official DINO pipeline (OFFICIAL_DINO below), timed in
the same run, as a ratio. Goals: CPU path >= 2x the official DINO per core; device path's CPU work per DINO sample
<= 1/10 of the official's.

`--device cuda` (benchmarks/gpu.sh) times the device path's GPU side instead: batches of `--batch` samples (256)
of each method's encoded images and draws, decoded there (nvJPEG) and turned into the views by
pas.ssl.gpu_augment.device_views, in wall seconds with the device synchronised; figures `<method>/device-gpu`
whose device is the GPU's profile name (h100, ...), the GPU time the augmentation takes from training on the
same GPU, which `pas plan` adds to the model's. `--device cpu` runs the same code on CPU tensors (the dry run).
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import torch
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import default_collate
from torchvision import transforms

from pas.core.shards import atomic_path, write_shard
from pas.ssl import METHODS, get_method, method_args
from pas.ssl.data import ViewStream

TABLE = Path(__file__).parent / "throughput.json"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera")


# ---- the official DINO augmentation, copied from facebookresearch/dino: utils.py:36-68 (GaussianBlur,
# Solarization) and main_dino.py `class DataAugmentationDINO` (commit 04c0ad9 of the index; torchvision transforms
# on PIL images, bicubic crops, 2 global crops at 224 and local_crops_number local crops at 96) -------------------
class GaussianBlur:
    """Apply Gaussian Blur to the PIL image."""

    def __init__(self, p=0.5, radius_min=0.1, radius_max=2.):
        self.prob = p
        self.radius_min = radius_min
        self.radius_max = radius_max

    def __call__(self, img):
        do_it = random.random() <= self.prob
        if not do_it:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


class Solarization:
    """Apply Solarization to the PIL image."""

    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        if random.random() < self.p:
            return ImageOps.solarize(img)
        return img


class DataAugmentationDINO:
    """main_dino.py's multi-crop augmentation, verbatim but for the module names."""

    def __init__(self, global_crops_scale, local_crops_scale, local_crops_number):
        flip_and_color_jitter = transforms.Compose([
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply(
                [transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)],
                p=0.8
            ),
            transforms.RandomGrayscale(p=0.2),
        ])
        normalize = transforms.Compose([
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ])
        self.global_transfo1 = transforms.Compose([
            transforms.RandomResizedCrop(224, scale=global_crops_scale, interpolation=Image.BICUBIC),
            flip_and_color_jitter,
            GaussianBlur(1.0),
            normalize,
        ])
        self.global_transfo2 = transforms.Compose([
            transforms.RandomResizedCrop(224, scale=global_crops_scale, interpolation=Image.BICUBIC),
            flip_and_color_jitter,
            GaussianBlur(0.1),
            Solarization(0.2),
            normalize,
        ])
        self.local_crops_number = local_crops_number
        self.local_transfo = transforms.Compose([
            transforms.RandomResizedCrop(96, scale=local_crops_scale, interpolation=Image.BICUBIC),
            flip_and_color_jitter,
            GaussianBlur(p=0.5),
            normalize,
        ])

    def __call__(self, image):
        crops = []
        crops.append(self.global_transfo1(image))
        crops.append(self.global_transfo2(image))
        for _ in range(self.local_crops_number):
            crops.append(self.local_transfo(image))
        return crops
# ---- end of the official code --------------------------------------------------------------------------------


def make_shards(folder: Path, images: int, side: int = 500, per_shard: int = 16) -> pa.Table:
    """WebDataset tars of packaged photos resized to `side` px on the longer side (JPEG q90); their manifest."""
    from skimage import data

    records = []
    for i in range(images):
        name = PHOTOS[i % len(PHOTOS)]
        pixels = getattr(data, name)()
        image = Image.fromarray(pixels).convert("RGB")
        scale = side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        if i >= len(PHOTOS):
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else image.rotate(90, expand=True)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        records.append((f"{name}-{i:05d}", buffer.getvalue()))
    keys, shards = [], []
    for start in range(0, images, per_shard):
        shard = f"shard-{start // per_shard:05d}.tar"
        write_shard(folder / shard, [(key, jpeg, {}) for key, jpeg in records[start:start + per_shard]])
        keys += [key for key, _ in records[start:start + per_shard]]
        shards += [shard] * len(records[start:start + per_shard])
    return pa.table({"key": keys, "shard": shards})


def timed(items: Any, batch: int, collate: Any) -> tuple[int, float]:
    """(samples, CPU seconds of this process) to pull every item of `items` and collate them in batches."""
    start, count, pending = time.process_time(), 0, []
    for item in items:
        pending.append(item)
        if len(pending) == batch:
            collate(pending)
            count, pending = count + batch, []
    return count, time.process_time() - start


def rate(make_items: Any, batch: int, collate: Any, repeats: int) -> float:
    """Median samples/s over `repeats` passes."""
    rates = []
    for _ in range(repeats):
        count, seconds = timed(make_items(), batch, collate)
        rates.append(count / seconds)
    return statistics.median(rates)


def measure(manifest: pa.Table, root: Path, size: int, batch: int, repeats: int) -> list[dict[str, Any]]:
    """Per-core samples/s of every method's CPU path and device path's CPU part, and of the official DINO."""
    dino_args = method_args("dino", {}, "pretrain.method_args.dino")
    official = DataAugmentationDINO(dino_args.global_crop_scale, dino_args.local_crop_scale, dino_args.local_crops)
    reference = ViewStream(manifest, root, [official], seed=0)   # the same records, PIL decode as pil_loader
    official = [rate(lambda: iter(reference), batch, default_collate, 1) for _ in range(repeats)]
    rows = []
    for name in sorted(METHODS):
        official.append(rate(lambda: iter(reference), batch, default_collate, 1))   # interleaved: the same load
        specs = get_method(name).view_transforms(method_args(name, {}, f"pretrain.method_args.{name}"), size)
        cpu = ViewStream(manifest, root, specs, seed=0, normalize=False)
        device = ViewStream(manifest, root, specs, seed=0, encoded=True)
        cpu_rate = rate(lambda: iter(cpu), batch, default_collate, repeats)
        device_rate = rate(lambda: iter(device), batch, default_collate, repeats)
        rows.append({"method": name, "views": len(specs), "cpu": cpu_rate, "device": device_rate})
    return [{"official_dino": statistics.median(official), "size": size, "rows": rows}]


def measure_finetune(size: int, batch: int, repeats: int) -> dict[str, float]:
    """Per-core samples/s of full fine-tuning's CPU augmentation (pas.transfer.fulltune, in DataLoader workers): a
    random resized crop + flip (ImageNet) or a padded crop + flip (CIFAR) of already decoded images at `size`."""
    from pas.transfer.fulltune import _augment, random_resized_crop

    pixels = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    rates = {}
    for name, augment in (("random_resized_crop", random_resized_crop), ("pad_crop", _augment)):
        gen, runs = torch.Generator().manual_seed(0), []
        for _ in range(repeats):
            start = time.process_time()
            for _ in range(4):
                augment(pixels, gen)
            runs.append(4 * batch / (time.process_time() - start))
        rates[name] = statistics.median(runs)
    return rates


def finetune_figures(rates: dict[str, float], batch: int, size: int) -> list[dict[str, Any]]:
    """throughput.json figures: task input, model finetune_<augment>/cpu, samples/s of one CPU core (pas plan's
    fine-tuning row bound)."""
    machine = f"{platform.machine()} CPU, 1 thread"
    return [{"task": "input", "model": f"finetune_{name}/cpu", "batch": batch, "image_size": size, "device": "cpu",
             "machine": machine, "date": datetime.date.today().isoformat(), "gflops_per_image": None,
             "images_per_s": value, "per_core": True} for name, value in rates.items()]


def figures(result: dict[str, Any], batch: int) -> list[dict[str, Any]]:
    """throughput.json figures: task input, model <method>/<path>, samples/s of one CPU core."""
    machine = f"{platform.machine()} CPU, 1 thread"
    date = datetime.date.today().isoformat()
    out = []
    for row in result["rows"]:
        for path in ("cpu", "device"):
            out.append({"task": "input", "model": f"{row['method']}/{path}", "batch": batch,
                        "image_size": result["size"], "device": "cpu", "machine": machine, "date": date,
                        "gflops_per_image": None, "images_per_s": row[path], "per_core": True})
    out.append({"task": "input", "model": "dino/official", "batch": batch, "image_size": result["size"],
                "device": "cpu", "machine": machine, "date": date, "gflops_per_image": None,
                "images_per_s": result["official_dino"], "per_core": True})
    return out


def merge(table: Path, new: list[dict[str, Any]]) -> None:
    """Replace the table's figures of the same (task, model, batch, device) with `new`, keep the others; atomic."""
    old = json.loads(table.read_text())["figures"] if table.is_file() else []
    key = lambda f: (f["task"], f["model"], f.get("batch"), f["device"])  # noqa: E731
    merged = {key(f): f for f in old}
    merged.update({key(f): f for f in new})
    with atomic_path(table) as tmp:
        tmp.write_text(json.dumps({"figures": sorted(merged.values(), key=lambda f: tuple(map(str, key(f))))},
                                  indent=1) + "\n")


def device_batches(manifest: pa.Table, root: Path, specs: list, batch: int) -> list[tuple[list[bytes], torch.Tensor]]:
    """The device path's batches (encoded images and their (N, V, PARAMS) draws) as its DataLoader delivers them."""
    items = list(ViewStream(manifest, root, specs, seed=0, encoded=True))
    while len(items) < batch:                  # fewer shard images than one batch: the same images again
        items += items[:batch - len(items)]
    out = []
    for start in range(0, len(items) - batch + 1, batch):
        part = items[start:start + batch]
        out.append(([item["encoded"] for item in part], torch.stack([item["params"] for item in part])))
    return out


def measure_device(manifest: pa.Table, root: Path, size: int, batch: int, repeats: int, device: str,
                   methods: list[str], fail: list[str]) -> Any:
    """Yield each method's figure of the device path's rate on `device` (samples/s of decode + views, wall time
    with the device synchronised; median of `repeats` passes after a warm-up), or its one-line error."""
    from pas.ssl.gpu_augment import device_views

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for name in methods:
        try:
            if any(part in name for part in fail):
                raise RuntimeError("injected failure (--fail)")
            specs = get_method(name).view_transforms(method_args(name, {}, f"pretrain.method_args.{name}"), size)
            batches = device_batches(manifest, root, specs, batch)
            device_views(*batches[0], specs, device)        # warm-up: nvJPEG handles, kernels
            sync()
            rates = []
            for _ in range(repeats):
                start = time.perf_counter()
                for encoded, params in batches:
                    device_views(encoded, params, specs, device)
                sync()
                rates.append(len(batches) * batch / (time.perf_counter() - start))
            yield name, statistics.median(rates), None
        except Exception as error:  # noqa: BLE001  (saved as failed; the other methods go on)
            message = str(error).strip().splitlines()
            yield name, None, f"{type(error).__name__}: {message[0][:300]}" if message else type(error).__name__
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def device_figure(name: str, rate_: float | None, error: str | None, batch: int, size: int, device: str
                  ) -> dict[str, Any]:
    """The throughput.json figure of one method's device path on `device` (its profile name: h100, ..., cpu)."""
    from throughput import device_kind, machine

    figure = {"task": "input", "model": f"{name}/device-gpu", "batch": batch, "image_size": size,
              "device": device_kind(device), "machine": machine(device), "date": datetime.date.today().isoformat(),
              "gflops_per_image": None, "images_per_s": rate_, "per_core": False}
    return {**figure, "error": error} if error else figure


def render(result: dict[str, Any]) -> str:
    """The side-by-side table."""
    official = result["official_dino"]
    lines = [f"input pipeline at {result['size']} px, samples/s per CPU core (median), official DINO "
             f"DataAugmentationDINO: {official:.1f}/s",
             f"{'method':<14}{'views':>6}{'CPU path':>10}{'x official':>12}{'device path CPU':>17}{'CPU work':>12}"]
    for row in result["rows"]:
        lines.append(f"{row['method']:<14}{row['views']:>6}{row['cpu']:>10.1f}{row['cpu'] / official:>11.2f}x"
                     f"{row['device']:>17.0f}{official / row['device']:>11.3f}x")
    lines.append("CPU work: the device path's CPU time per sample as a share of the official DINO pipeline's "
                 "(goal for dino <= 0.1); x official: goal for dino >= 2")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build the shards, time every pipeline, print the table (and save the figures with --write)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=None, help="samples per batch (16 on the CPU, 256 on a device)")
    parser.add_argument("--device", default=None,
                        help="time the device path's GPU side on this device (cuda; cpu: a dry run) instead")
    parser.add_argument("--methods", nargs="*", default=None, help="the methods to time with --device (all)")
    parser.add_argument("--fail", nargs="*", default=[], metavar="METHOD",
                        help="make these methods' device timing fail (a check that a failure is saved as failed)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"save the figures into {TABLE}")
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--finetune-only", action="store_true",
                        help="time only full fine-tuning's augmentation (and save its figures with --write)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    random.seed(0)
    torch.manual_seed(0)
    np.random.seed(0)
    if args.device:
        return main_device(args)
    args.batch = args.batch or 16
    if args.finetune_only:
        return main_finetune(args)
    with tempfile.TemporaryDirectory(prefix="pas-input-") as tmp:
        manifest = make_shards(Path(tmp), args.images)
        (result,) = measure(manifest, Path(tmp), args.size, args.batch, args.repeats)
    finetune = measure_finetune(args.size, args.batch, args.repeats)
    print(render(result))
    print("full fine-tuning's augmentation (decoded images, in DataLoader workers), samples/s per CPU core: "
          + ", ".join(f"{name} {value:,.1f}" for name, value in finetune.items()))
    if args.write:
        merge(args.table, figures(result, args.batch) + finetune_figures(finetune, args.batch, args.size))
        print(f"saved {len(result['rows']) * 2 + 1 + len(finetune)} figures (task input) into {args.table}")
    return 0


def main_finetune(args: argparse.Namespace) -> int:
    """--finetune-only: full fine-tuning's augmentation rates, printed (and saved with --write)."""
    finetune = measure_finetune(args.size, args.batch, args.repeats)
    for name, value in finetune.items():
        print(f"finetune_{name}/cpu at {args.size} px: {value:,.1f} samples/s per CPU core")
    if args.write:
        merge(args.table, finetune_figures(finetune, args.batch, args.size))
    return 0


def main_device(args: argparse.Namespace) -> int:
    """--device: time each method's device path there, saving each figure as soon as it is measured (or failed);
    exit status 1 when one failed."""
    sys.path.insert(0, str(Path(__file__).parent))   # benchmarks/throughput.py: the device's name and profile
    from throughput import merge as merge_figures

    batch, failed = args.batch or 256, 0
    with tempfile.TemporaryDirectory(prefix="pas-input-") as tmp:
        manifest = make_shards(Path(tmp), min(args.images, batch))
        for name, rate_, error in measure_device(manifest, Path(tmp), args.size, batch, args.repeats, args.device,
                                                 args.methods or sorted(METHODS), args.fail):
            figure = device_figure(name, rate_, error, batch, args.size, args.device)
            if args.write:
                merge_figures(args.table, [figure])
            failed += bool(error)
            shown = f"{rate_:,.1f} samples/s" if rate_ else f"FAILED {error}"
            print(f"{'input':<11}{figure['model']:<28}batch {batch:>3} {shown:>22}  on {figure['machine']}",
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
