"""Training throughput (images/s) of each SSL method for one backbone and resolution.

    python benchmarks/pretrain.py --backbone resnet18 --image-size 64 --batch-size 32
    python benchmarks/pretrain.py --backbone vit_small_patch16_224 --image-size 224 --methods dino --batch-size 64
    python benchmarks/pretrain.py --backbone resnet50 --image-size 224 --methods all4one --paper-args

A step is what the trainer does per batch: every view through the backbone and heads, backward,
the optimizer (AdamW or LARS), the method's hooks (EMA teacher, queue, centre). Batches are synthetic tensors shaped like
the method's views (so the figure is the model's speed, not the decoder's); the augmentation
column times the method's view transforms on one core, the ceiling of one decode worker.
Method hyperparameters come from params.yaml (pretrain.method_args) unless --paper-args.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from pas.core.runtime import pick_device
from pas.ssl import METHODS, get_method, method_args
from pas.ssl.backbones import create_backbone
from pas.ssl.base import Progress
from pas.ssl.module import OptimizerConfig, make_optimizer, param_groups


def augment_rate(transforms: list, image: Image.Image, seconds: float = 1.0) -> float:
    """Images per second through all of a method's view transforms, one process."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for transform in transforms:
            transform(image)
        done += 1
    return done / (time.perf_counter() - start)


def step_rate(name: str, overrides: dict, backbone_name: str, image_size: int, batch: int, steps: int, warmup: int,
              device: str, optimizer_name: str = "adamw") -> dict[str, float]:
    """Images/s and ms per optimizer step of method `name` on synthetic views."""
    args = method_args(name, overrides, f"pretrain.method_args.{name}")
    cls = get_method(name)
    cls.check(args, image_size, batch, f"pretrain.method_args.{name}")
    torch.manual_seed(0)
    backbone, dim = create_backbone(backbone_name)
    method = cls(backbone, dim, args)
    model = torch.nn.ModuleList([backbone, method]).to(device).train()
    optimizer = make_optimizer(param_groups(model, 1e-4, 1e-4, method.lr_scales()),
                               OptimizerConfig(name=optimizer_name, lr=1e-4, weight_decay=1e-4))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (image_size, image_size, 3), np.uint8))
    transforms = cls.view_transforms(args, image_size)
    views = [torch.randn(batch, *t(image).shape, device=device) for t in transforms]
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    timings = []
    for step in range(warmup + steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            loss = method(backbone, views).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.before_optimizer_step(Progress(step, warmup + steps, 100))
        if method.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), method.grad_clip)
        optimizer.step()
        method.after_optimizer_step(backbone, Progress(step + 1, warmup + steps, 100))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step >= warmup:
            timings.append(time.perf_counter() - start)
    seconds = float(np.median(timings))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"views": len(views), "images_per_s": batch / seconds, "ms_per_step": 1000 * seconds,
            "trainable_M": trainable / 1e6, "augment_images_per_s": augment_rate(transforms, image)}


def main() -> None:
    """Parse flags, time each method, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS), choices=sorted(METHODS))
    parser.add_argument("--params", default="params.yaml", help="method_args are read from its pretrain section")
    parser.add_argument("--paper-args", action="store_true", help="ignore params.yaml: the papers' head/queue sizes")
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "lars"])
    parser.add_argument("--device", default=None, help="default: PAS_DEVICE, else cuda if available, else cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads on the CPU (0: torch's default)")
    flags = parser.parse_args()
    if flags.threads:
        torch.set_num_threads(flags.threads)
    device = flags.device or pick_device()
    configured = {}
    if not flags.paper_args and Path(flags.params).is_file():
        configured = (yaml.safe_load(Path(flags.params).read_text()).get("pretrain") or {}).get("method_args") or {}
    where = torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"{flags.backbone} @ {flags.image_size}px, batch {flags.batch_size}, {where}, "
          f"{'paper' if flags.paper_args else flags.params} method args, {flags.optimizer}")
    print(f"{'method':<14}{'views':>6}{'img/s':>10}{'ms/step':>10}{'trainable M':>13}{'augment img/s':>15}")
    for name in flags.methods:
        r = step_rate(name, configured.get(name) or {}, flags.backbone, flags.image_size, flags.batch_size,
                      flags.steps, flags.warmup, device, flags.optimizer)
        print(f"{name:<14}{r['views']:>6}{r['images_per_s']:>10.1f}{r['ms_per_step']:>10.1f}"
              f"{r['trainable_M']:>13.1f}{r['augment_images_per_s']:>15.1f}", flush=True)


if __name__ == "__main__":
    main()
