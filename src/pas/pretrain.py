"""Self-supervised pretraining of a timm backbone on the curated shards (stage `pretrain`).

    metrics = pretrain(read_table("data/curated/manifest.parquet"), Path("data"), cfg, Path("models/pretrain"), seed=0)
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pas.config import require
from pas.runtime import num_workers, pick_device
from pas.shards import atomic_path, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """params.pretrain: SSL method, backbone and optimisation."""

    method: str = "simclr"
    backbone: str = "resnet18"
    init: str = "random"
    image_size: int = 64
    epochs: int = 2
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    temperature: float = 0.2
    proj_dim: int = 128
    max_steps: int = -1

    def validate(self, prefix: str) -> None:
        """Check names against the registries and numbers against their ranges."""
        import timm

        from pas.ssl import METHODS
        from pas.ssl.backbones import WEIGHT_SUFFIXES, backbone_hint

        require(self.method in METHODS, f"{prefix}.method", self.method, f"use one of {', '.join(sorted(METHODS))}")
        if not timm.is_model(self.backbone):
            require(False, f"{prefix}.backbone", self.backbone, backbone_hint(self.backbone))
        if self.init != "random":
            path = Path(self.init)
            require(path.suffix in WEIGHT_SUFFIXES and path.is_file(), f"{prefix}.init", self.init,
                    f"use 'random' or an existing weights file ({', '.join(WEIGHT_SUFFIXES)})")
        for name, low in (("image_size", 8), ("epochs", 1), ("batch_size", 2), ("proj_dim", 1)):
            value = getattr(self, name)
            require(value >= low, f"{prefix}.{name}", value, f"use an integer >= {low}")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            require(value > 0, f"{prefix}.{name}", value, "use a positive number")
        require(self.weight_decay >= 0, f"{prefix}.weight_decay", self.weight_decay, "use a number >= 0")
        require(0 <= self.warmup_epochs <= self.epochs, f"{prefix}.warmup_epochs", self.warmup_epochs,
                f"use a number between 0 and epochs ({self.epochs})")
        require(self.max_steps == -1 or self.max_steps >= 1, f"{prefix}.max_steps", self.max_steps,
                "use -1 (no limit) or a positive integer")


def keys_digest(manifest: pa.Table) -> str:
    """sha256 of the manifest's sorted keys: which images the backbone was trained on."""
    keys = sorted(manifest.column("key").to_pylist())
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def _trainer_devices(device: str) -> tuple[str, int | list[int]]:
    """Lightning accelerator and devices for a device string: all visible GPUs for 'cuda'."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        return "cuda", [int(index)] if index else max(1, torch.cuda.device_count())
    return kind, 1


def save_backbone(backbone: Any, path: Path, metadata: dict[str, str]) -> None:
    """Write the backbone's state_dict as safetensors, atomically."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    with atomic_path(path) as tmp:
        tmp.write_bytes(save(state, metadata=metadata))


def pretrain(manifest: pa.Table, root: Path, cfg: PretrainConfig, out_dir: Path, seed: int,
             loggers: list | None = None) -> dict[str, Any]:
    """Train cfg.backbone with cfg.method on the manifest's images; write backbone + model card."""
    import lightning as L

    from pas.ssl import get_method
    from pas.ssl.backbones import create_backbone
    from pas.ssl.data import IMAGENET_MEAN, IMAGENET_STD, StreamSync, TwoViewStream, make_loader
    from pas.ssl.module import PretrainModule

    L.seed_everything(seed, workers=True)
    device = pick_device()
    accelerator, devices = _trainer_devices(device)
    world = devices if isinstance(devices, int) else len(devices)

    dataset = TwoViewStream(manifest, root, cfg.image_size, seed)
    images = dataset.num_images
    if images == 0:
        raise ValueError("the manifest lists no images to pretrain on")
    per_rank = images // world
    require(per_rank >= cfg.batch_size, "pretrain.batch_size", cfg.batch_size,
            f"use at most {per_rank} (the images per device: {images} images on {world} device(s))")
    workers = min(num_workers(), per_rank // cfg.batch_size // 8)   # >= 8 full batches per worker
    steps_per_epoch = (per_rank - (max(1, workers) - 1) * (cfg.batch_size - 1)) // cfg.batch_size
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps > 0:
        total_steps = min(total_steps, cfg.max_steps)
    warmup_steps = min(total_steps, round(cfg.warmup_epochs * steps_per_epoch))
    derived = {"images": images, "shards": len(dataset.plan), "world_size": world, "num_workers": workers,
               "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "warmup_steps": warmup_steps}
    log.info("pretrain %s/%s on %s: %s", cfg.method, cfg.backbone, device, derived)

    backbone, feature_dim = create_backbone(cfg.backbone, cfg.init)
    method = get_method(cfg.method).from_config(backbone, feature_dim, cfg)
    module = PretrainModule(backbone, method, cfg.lr, cfg.weight_decay, warmup_steps, total_steps)
    loader = make_loader(dataset, cfg.batch_size, workers, pin_memory=accelerator == "cuda")

    with tempfile.TemporaryDirectory(prefix="pas-lightning-") as scratch:
        trainer = L.Trainer(
            accelerator=accelerator, devices=devices,
            precision="bf16-mixed" if accelerator == "cuda" else "32-true",
            max_epochs=cfg.epochs, max_steps=cfg.max_steps, limit_train_batches=steps_per_epoch,
            logger=loggers or False, enable_checkpointing=False, default_root_dir=scratch,
            callbacks=[StreamSync(dataset)], log_every_n_steps=min(50, steps_per_epoch),
        )
        for logger in trainer.loggers:
            logger.log_hyperparams({f"derived.{k}": v for k, v in derived.items()})
        start = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        seconds = time.perf_counter() - start

    losses = module.epoch_losses
    if not losses or not math.isfinite(losses[-1]):
        raise FloatingPointError(f"pretraining produced no finite loss (epoch losses: {losses})")
    steps = trainer.global_step
    metrics = {
        "loss_first_epoch": losses[0],
        "loss_last_epoch": losses[-1],
        "epochs": len(losses),
        "steps": steps,
        "images": images,
        "images_per_second": steps * cfg.batch_size * world / seconds,
    }
    if trainer.is_global_zero:
        out_dir = Path(out_dir)
        save_backbone(backbone, out_dir / "backbone.safetensors", {"backbone": cfg.backbone, "method": cfg.method})
        card = {
            "backbone": cfg.backbone,
            "method": cfg.method,
            "weights": "backbone.safetensors",
            "timm": {"model_name": cfg.backbone, "num_classes": 0},
            "feature_dim": feature_dim,
            "input": {"image_size": cfg.image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "epochs": len(losses),
            "steps": steps,
            "images": images,
            "manifest_keys_sha256": keys_digest(manifest),
            "final_loss": losses[-1],
            "seed": seed,
            "config": dataclasses.asdict(cfg),
            "derived": derived,
        }
        write_json(card, out_dir / "model_card.json")
    log.info("pretrain done: %s", metrics)
    return metrics
