"""Self-supervised pretraining of a timm backbone on the curated shards (stage `pretrain`).

    metrics = pretrain(read_table("data/curated/manifest.parquet"), Path("."), cfg, Path("data/pretrain"), seed=0,
                       knn_val=Path("data/downstream/animal_shapes/train.parquet"),
                       checkpoint_dir=Path("checkpoints/pretrain"))
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pas.core.config import ConfigError, parse_size, require
from pas.core.recipes import load_recipe
from pas.core.runtime import augment_on_device, num_workers, pick_device
from pas.core.shards import atomic_path, write_json
from pas.core.run_facts import split_run_facts

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "lars")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
LR_SCALINGS = ("linear", "none")
LR_REFERENCE_BATCH = 256   # DINO main_dino.py and solo-learn: lr x global batch / 256


@dataclass(frozen=True)
class PretrainConfig:
    """params.pretrain: SSL method (+ per-method args), backbone, optimisation and the kNN monitor."""

    recipe: str = ""                        # a file of recipes/ whose pretrain block overrides these values
    dataset: str = "curated"                # curated | a parquet / WebDataset .tar / ImageFolder path or glob
    method: str = "simclr"
    backbone: str = "tf_efficientnet_lite0"
    init: str = "random"
    image_size: int = 64
    epochs: int = 2
    budget: int | str = 0                   # images seen (500k, 1.2M); 0: `epochs` passes. With a budget, `epochs`
                                            # divides the run into nominal epochs for the schedules
    batch_size: int = 64
    optimizer: str = "adamw"                # adamw | lars
    lr: float = 4e-3                        # base lr: x global batch / 256 with lr_scaling linear
    lr_scaling: str = "linear"              # linear (lr x global batch / 256) | none (lr as given)
    weight_decay: float = 1e-4
    weight_decay_end: float | None = None   # cosine weight-decay schedule to this value (DINO: 0.04 -> 0.4)
    momentum: float = 0.9                   # lars
    trust_coeff: float = 0.02               # lars eta (solo-learn: 0.02)
    trust_clip: bool = True                 # lars: clip the adaptive lr at the global lr (solo-learn clip_lr)
    warmup_epochs: float = 0.0
    max_steps: int = -1
    accumulate_grad_batches: int = 1        # batches per optimizer step (effective batch = batch_size x this x GPUs)
    precision: str = "auto"                 # auto (bf16-mixed on GPUs that have it, else 16-mixed; 32 on CPU) | ...
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_images: int = 1000
    method_args: dict[str, Any] = field(default_factory=dict)   # method name -> its Args keys

    def validate(self, prefix: str) -> None:
        """Check names against the registries, numbers against their ranges, and every method_args block."""
        from pas.models.timm_archs import WEIGHT_SUFFIXES, is_timm_arch
        from pas.ssl import METHODS, method_args

        require(self.method in METHODS, f"{prefix}.method", self.method, f"use one of {', '.join(sorted(METHODS))}")
        if not is_timm_arch(self.backbone):
            from pas.ssl.backbones import backbone_hint

            require(False, f"{prefix}.backbone", self.backbone, backbone_hint(self.backbone))
        if self.init != "random":
            path = Path(self.init)
            require(path.suffix in WEIGHT_SUFFIXES and path.is_file(), f"{prefix}.init", self.init,
                    f"use 'random' or an existing weights file ({', '.join(WEIGHT_SUFFIXES)})")
        require(self.optimizer in OPTIMIZERS, f"{prefix}.optimizer", self.optimizer,
                f"use one of {', '.join(OPTIMIZERS)}")
        require(self.precision in PRECISIONS, f"{prefix}.precision", self.precision,
                f"use one of {', '.join(PRECISIONS)}")
        if self.recipe:
            load_recipe(self.recipe, prefix)   # names the recipes there are when this one is not
        require(self.lr_scaling in LR_SCALINGS, f"{prefix}.lr_scaling", self.lr_scaling,
                f"use one of {', '.join(LR_SCALINGS)}")
        if self.budget not in (0, "0"):
            parse_size(self.budget, f"{prefix}.budget")
        require(bool(str(self.dataset).strip()), f"{prefix}.dataset", self.dataset,
                "use curated, or a parquet / WebDataset .tar / ImageFolder path or glob")
        for name, low in (("image_size", 8), ("epochs", 1), ("batch_size", 2), ("knn_k", 1), ("knn_images", 2),
                          ("accumulate_grad_batches", 1)):
            value = getattr(self, name)
            require(value >= low, f"{prefix}.{name}", value, f"use an integer >= {low}")
        for name in ("lr", "knn_temperature"):
            value = getattr(self, name)
            require(value > 0, f"{prefix}.{name}", value, "use a positive number")
        require(self.weight_decay >= 0, f"{prefix}.weight_decay", self.weight_decay, "use a number >= 0")
        require(self.weight_decay_end is None or self.weight_decay_end >= 0, f"{prefix}.weight_decay_end",
                self.weight_decay_end, "use null (constant weight decay) or a number >= 0")
        require(0 <= self.momentum < 1, f"{prefix}.momentum", self.momentum, "use a number in [0, 1)")
        require(self.trust_coeff > 0, f"{prefix}.trust_coeff", self.trust_coeff, "use a positive number")
        require(0 <= self.warmup_epochs <= self.epochs, f"{prefix}.warmup_epochs", self.warmup_epochs,
                f"use a number between 0 and epochs ({self.epochs})")
        require(self.max_steps == -1 or self.max_steps >= 1, f"{prefix}.max_steps", self.max_steps,
                "use -1 (no limit) or a positive integer")
        for name, block in self.method_args.items():
            key = f"{prefix}.method_args.{name}"
            require(name in METHODS, key, block, f"unknown method; use one of {', '.join(sorted(METHODS))}")
            require(block is None or isinstance(block, dict), key, block, "use a mapping of that method's keys")
            args = method_args(name, block, key)   # every block's values are checked; sizes only for the method run
            if name == self.method:
                args.check_run(self.image_size, self.batch_size, key)   # one device; rechecked per run

    @property
    def images_budget(self) -> int:
        """Images to train on in all (0: `epochs` passes over the dataset)."""
        return 0 if self.budget in (0, "0") else parse_size(self.budget, "pretrain.budget")

    def effective_lr(self, global_batch: int) -> float:
        """The peak learning rate: `lr` x global batch / 256 under the linear scaling rule, else `lr`."""
        return self.lr * global_batch / LR_REFERENCE_BATCH if self.lr_scaling == "linear" else self.lr

    def optimizer_config(self, global_batch: int = LR_REFERENCE_BATCH) -> Any:
        """The optimizer settings for PretrainModule at this global batch (images per optimizer step)."""
        from pas.ssl.module import OptimizerConfig

        return OptimizerConfig(name=self.optimizer, lr=self.effective_lr(global_batch),
                               weight_decay=self.weight_decay, weight_decay_end=self.weight_decay_end,
                               momentum=self.momentum, trust_coeff=self.trust_coeff, trust_clip=self.trust_clip)

    def args(self) -> Any:
        """The selected method's frozen Args (paper defaults for keys not set)."""
        from pas.ssl import method_args

        return method_args(self.method, self.method_args.get(self.method), f"pretrain.method_args.{self.method}")


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


def cluster_shape(accelerator: str, devices: int | list[int], env: dict[str, str] | None = None
                  ) -> tuple[int | list[int], int]:
    """(devices per node, nodes) from the launcher's environment: torchrun (WORLD_SIZE / LOCAL_WORLD_SIZE, where a
    CPU node runs LOCAL_WORLD_SIZE processes), SLURM (SLURM_NNODES, one task per GPU), or PAS_NUM_NODES; one node
    otherwise. Lightning reads ranks and the master address from the same environment."""
    env = dict(os.environ) if env is None else env
    if "WORLD_SIZE" in env and "LOCAL_WORLD_SIZE" in env:          # torchrun / torchelastic
        local, world = int(env["LOCAL_WORLD_SIZE"]), int(env["WORLD_SIZE"])
        return (local if accelerator == "cpu" else devices), max(1, world // local)
    nodes = env.get("PAS_NUM_NODES") or env.get("SLURM_NNODES") or "1"
    if not nodes.isdigit() or int(nodes) < 1:
        raise ConfigError(f"PAS_NUM_NODES={nodes!r} is not a positive integer; unset it or give the node count")
    return devices, int(nodes)


def trainer_precision(wanted: str, accelerator: str) -> str:
    """Lightning precision: `auto` is bf16-mixed on GPUs that support it, 16-mixed on older ones, 32 on CPU."""
    import torch

    if wanted != "auto":
        return wanted
    if accelerator != "cuda":
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"  # not emulated


def save_backbone(backbone: Any, path: Path, metadata: dict[str, str]) -> None:
    """Write the backbone's state_dict as safetensors, atomically."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    with atomic_path(path) as tmp:
        tmp.write_bytes(save(state, metadata=metadata))


MODEL_CARD = """---
library_name: timm
license: other
tags: [image-feature-extraction, timm, self-supervised, pas]
---
# {backbone} pretrained by pas ({method})

A `{backbone}` backbone without a classifier (`num_classes: 0`, {feature_dim}-d pooled features), pretrained with
{method} on {images} images of `{dataset}` for {steps} steps ({images_seen} images seen) at {image_size} px.
{exported}

## Load it

```python
import timm, torch
model = timm.create_model("local-dir:{path}", pretrained=True)      # this folder; or "hf-hub:ORG/NAME" once pushed
config = timm.data.resolve_data_config({{}}, model=model)           # input_size {image_size} px, mean/std it trained with
transform = timm.data.create_transform(**config)
features = model(transform(image).unsqueeze(0))                     # (1, {feature_dim})
# a classifier on top: timm.create_model("local-dir:{path}", pretrained=True, num_classes=10)
```

`model_card.json` beside this file holds the full training record (config, metrics, dataset digest).
"""


def save_timm_folder(backbone: Any, out_dir: Path, card: dict[str, Any]) -> None:
    """Write `backbone` as a folder timm loads (`timm.create_model("local-dir:OUT", pretrained=True)`, the hf-hub
    layout): model.safetensors, config.json (architecture, num_classes 0, the training input size, mean and std)
    and a README model card; backbone.safetensors is the same file under pas's older name."""
    from timm.models import save_for_hf

    size = card["input"]["image_size"]
    save_for_hf(backbone, out_dir, safe_serialization=True,
                model_config={"pretrained_cfg": {"tag": f"pas_{card['method']}", "license": "other"}},
                data_config={"input_size": (3, size, size), "mean": tuple(card["input"]["mean"]),
                             "std": tuple(card["input"]["std"]), "crop_pct": 1.0, "interpolation": "bicubic"})
    try:
        os.link(out_dir / "model.safetensors", out_dir / "backbone.safetensors")
    except OSError:
        save_backbone(backbone, out_dir / "backbone.safetensors", {"backbone": card["backbone"],
                                                                   "method": card["method"]})
    dataset = (card.get("dataset") or {}).get("name") or "curated"
    text = MODEL_CARD.format(backbone=card["backbone"], method=card["method"], feature_dim=card["feature_dim"],
                             images=card["images"], dataset=dataset, steps=card["steps"],
                             images_seen=card["metrics"].get("images_seen"), image_size=size,
                             exported=f"Its weights are the {card['exported']}.", path="path/to/this/folder")
    (out_dir / "README.md").write_text(text)


def heldout_count(args: Any, images: int) -> int:
    """Images held out of training for the label-free score: the method's heldout_images, at most a tenth."""
    held = getattr(args, "heldout_images", 0)
    return min(held, images // 10) if held > 0 else 0


def epoch_steps(cfg: PretrainConfig, images: int, world: int, workers: int = 0) -> int:
    """Optimizer steps per epoch: whole batches per device (each loader worker past the first may end on a
    partial batch, which is dropped), then whole accumulations; a batch or an accumulation the data cannot fill
    is a ConfigError."""
    per_rank = images // world
    require(per_rank >= cfg.batch_size, "pretrain.batch_size", cfg.batch_size,
            f"use at most {per_rank} (the images per device: {images} images on {world} device(s))")
    batches = (per_rank - (max(1, workers) - 1) * (cfg.batch_size - 1)) // cfg.batch_size
    require(batches >= cfg.accumulate_grad_batches, "pretrain.accumulate_grad_batches", cfg.accumulate_grad_batches,
            f"use at most {batches} (the full batches per epoch and device)")
    return batches // cfg.accumulate_grad_batches    # a partial accumulation is not trained on


def training_length(cfg: PretrainConfig, steps_per_epoch: int, global_batch: int) -> tuple[int, int]:
    """(optimizer steps, epochs to run): `epochs` passes, or with a budget the steps that see budget images
    (rounded up to whole global batches), so every dataset size trains on the same number of images."""
    if cfg.images_budget:
        total_steps = math.ceil(cfg.images_budget / global_batch)
    else:
        total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps > 0:
        total_steps = min(total_steps, cfg.max_steps)
    return total_steps, max(1, math.ceil(total_steps / steps_per_epoch))


def _metrics(module: Any, knn: Any, steps: int, start_step: int, images: int, images_per_step: int,
             seconds: float) -> dict[str, Any]:
    """metrics/pretrain.json: losses, the last epoch's monitor values and method terms, speed."""
    history = module.history
    if not history or not math.isfinite(history[-1]["loss"]):
        raise FloatingPointError(f"pretraining produced no finite loss (epoch losses: {module.epoch_losses})")
    last = dict(history[-1])
    monitor = {name: last.pop(name) for name in ("embedding_std", "embedding_rank")}
    metrics: dict[str, Any] = {
        "loss_first_epoch": history[0]["loss"],
        "loss_last_epoch": last.pop("loss"),
        "epochs": len(history),
        "steps": steps,
        "resumed_at_step": start_step,
        "images": images,
        "images_seen": steps * images_per_step,
        "images_per_second": (steps - start_step) * images_per_step / max(seconds, 1e-9),
    }
    if knn is not None and knn.history:
        metrics["knn_top1"] = knn.history[-1]["knn_top1"]
        monitor.update({k: v for k, v in knn.history[-1].items() if k != "knn_top1"})
    metrics["monitor"] = monitor
    metrics["terms"] = last
    return metrics


def pretrain(manifest: pa.Table, root: Path, cfg: PretrainConfig, out_dir: Path, seed: int,
             loggers: list | None = None, knn_val: Path | None = None, checkpoint_dir: Path | None = None,
             checkpoint_every: int = 100, source: dict[str, str] | None = None) -> dict[str, Any]:
    """Train cfg.backbone with cfg.method on the manifest's images; write backbone + model card.

    With `knn_val` (a labeled downstream parquet) every epoch logs online kNN accuracy. With
    `checkpoint_dir` the run checkpoints every `checkpoint_every` optimizer steps and, when
    started again with the same inputs, resumes from its last checkpoint. `source` ({name,
    path, md5} of the manifest) goes into the model card, so later stages can name their data.
    """
    import lightning as L
    import torch
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from pas.ssl import get_method
    from pas.ssl.backbones import create_backbone
    from pas.ssl.checkpoint import (
        AtomicCheckpointIO,
        StepCheckpoint,
        finish,
        last_checkpoint,
        run_dir,
    )
    from pas.ssl.data import StreamSync, ViewStream, make_loader, split_heldout
    from pas.ssl.gpu_augment import DeviceViews
    from pas.ssl.groups import GroupStream, has_siblings
    from pas.ssl.module import PretrainModule
    from pas.ssl.monitor import KnnMonitor, load_labeled_set, score_heldout
    from pas.ssl.syncbn import layer_sync

    L.seed_everything(seed, workers=True)
    device = pick_device()
    accelerator, devices = _trainer_devices(device)
    devices, nodes = cluster_shape(accelerator, devices)
    world = (devices if isinstance(devices, int) else len(devices)) * nodes
    cls, args = get_method(cfg.method), cfg.args()

    heldout = None
    if held := heldout_count(args, manifest.num_rows):   # a label-free score needs images the model never trained on
        manifest, heldout = split_heldout(manifest, held, seed)
    # views leave the workers as uint8 (normalised on the device), or as encoded bytes + draws that the device
    # decodes and augments (PAS_AUGMENT, default: on a GPU); the draws are the same either way
    on_device = augment_on_device(device)
    transforms = cls.view_transforms(args, cfg.image_size)
    if args.group_views and has_siblings(manifest):
        # StableRep: groups of m images of one prompt, each group's views decoded from several images on the CPU path
        # (the device path decodes one image per item); a manifest without prompt siblings streams m views per image
        on_device = False
        dataset: ViewStream | GroupStream = GroupStream(manifest, root, transforms, seed, normalize=False)
    else:
        dataset = ViewStream(manifest, root, transforms, seed, normalize=False, encoded=on_device)
    images = dataset.num_images
    if images == 0:
        raise ValueError("the manifest lists no images to pretrain on")
    workers = min(num_workers(world // nodes), images // world // cfg.batch_size // 8)   # >= 8 batches per worker
    steps_per_epoch = epoch_steps(cfg, images, world, workers)
    cls.check(args, cfg.image_size, cfg.batch_size * world, f"pretrain.method_args.{cfg.method}")
    accumulate = cfg.accumulate_grad_batches
    global_batch = cfg.batch_size * accumulate * world
    total_steps, epochs = training_length(cfg, steps_per_epoch, global_batch)
    # the schedules' epoch: one pass, or with a budget a nominal epoch (total / pretrain.epochs), so warm-up, DINO's
    # frozen last layer and teacher temperature take the same share of the run at every dataset size
    schedule_epoch = total_steps / cfg.epochs if cfg.images_budget else steps_per_epoch
    warmup_steps = min(total_steps, round(cfg.warmup_epochs * schedule_epoch))
    derived = {"images": images, "shards": len(dataset.plan), "world_size": world, "num_nodes": nodes,
               "num_workers": workers,
               "steps_per_epoch": steps_per_epoch, "accumulate_grad_batches": accumulate,
               "effective_batch_size": global_batch, "total_steps": total_steps, "epochs": epochs,
               "budget": cfg.images_budget, "images_seen": total_steps * global_batch,
               "lr": cfg.effective_lr(global_batch), "warmup_steps": warmup_steps,
               "views": len(dataset.transforms), "augment": "device" if on_device else "cpu"}
    if isinstance(dataset, GroupStream):   # a step's items are groups of m views: `images` above counts groups
        derived["prompt_groups"] = {"groups": images, "images": len(dataset.location), "views_per_group": dataset.m}
    log.info("pretrain %s/%s on %s: %s", cfg.method, cfg.backbone, device, derived)

    backbone, feature_dim = create_backbone(cfg.backbone, cfg.init, **cls.backbone_kwargs(args))
    method = cls(backbone, feature_dim, args)
    module = PretrainModule(backbone, method, cfg.optimizer_config(global_batch), warmup_steps, total_steps,
                            schedule_epoch)
    loader = make_loader(dataset, cfg.batch_size, workers, pin_memory=accelerator == "cuda")
    callbacks: list[Any] = [StreamSync(dataset, cfg.batch_size), DeviceViews(dataset.transforms)]
    knn = None
    if knn_val is not None:
        knn = KnnMonitor(load_labeled_set(knn_val, cfg.image_size, cfg.knn_images, seed), cfg.knn_k,
                         cfg.knn_temperature)
        callbacks.append(knn)
    digest = keys_digest(manifest)
    resume, run_path = None, None
    if checkpoint_dir is not None:
        run = {"config": dataclasses.asdict(cfg), "seed": seed, "manifest_keys_sha256": digest, "derived": derived,
               "dataset_md5": (source or {}).get("md5")}    # positional keys (parquet rows) need the data's digest
        run_path = run_dir(checkpoint_dir, run)
        resume = last_checkpoint(run_path)
        callbacks.append(StepCheckpoint(run_path, checkpoint_every))
        log.info("checkpoints every %d steps in %s%s", checkpoint_every, run_path,
                 f"; resuming from {resume}" if resume else "")

    with tempfile.TemporaryDirectory(prefix="pas-lightning-") as scratch:
        trainer = L.Trainer(
            accelerator=accelerator, devices=devices, num_nodes=nodes,
            strategy="ddp" if world > 1 else "auto",
            precision=trainer_precision(cfg.precision, accelerator), accumulate_grad_batches=accumulate,
            max_epochs=epochs + bool(cfg.images_budget), max_steps=total_steps if cfg.images_budget else cfg.max_steps,
            limit_train_batches=steps_per_epoch * accumulate,   # max_steps only when it cuts an epoch (resume)
            logger=loggers or False, enable_checkpointing=run_path is not None, default_root_dir=scratch,
            callbacks=callbacks, log_every_n_steps=min(50, steps_per_epoch),
            plugins=[AtomicCheckpointIO(), *layer_sync(world, module, accelerator)],   # BatchNorm over the global batch
        )
        for logger in trainer.loggers:
            logger.log_hyperparams({f"derived.{k}": v for k, v in derived.items()})
        start = time.perf_counter()
        with warnings.catch_warnings():   # StreamSync's checkpointed state resumes the stream mid-epoch
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
            trainer.fit(module, train_dataloaders=loader, ckpt_path=resume)
        seconds = time.perf_counter() - start

    metrics = _metrics(module, knn, trainer.global_step, module.start_step, images, global_batch, seconds)
    if heldout is not None and heldout.num_rows and trainer.is_global_zero:
        items = list(ViewStream(heldout, root, dataset.transforms, seed))
        views = [torch.stack([item["views"][v] for item in items]) for v in range(len(dataset.transforms))]
        metrics["label_free_score"] = score_heldout(method, backbone, views)
        metrics["heldout_images"] = len(items)
        log.info("label-free score (%s loss on %d held-out images): %.4f", cfg.method, len(items),
                 metrics["label_free_score"])
    if trainer.is_global_zero:
        out_dir = Path(out_dir)
        export = method.export_backbone(backbone)
        card = {
            "backbone": cfg.backbone,
            "method": cfg.method,
            "method_args": dataclasses.asdict(args),
            "weights": "backbone.safetensors",   # = model.safetensors; config.json + README.md make a timm folder
            "exported": "ema teacher" if export is not backbone else "online backbone",
            "timm": {"model_name": cfg.backbone, "num_classes": 0},
            "feature_dim": feature_dim,
            "input": {"image_size": cfg.image_size, "mean": list(IMAGENET_DEFAULT_MEAN), "std": list(IMAGENET_DEFAULT_STD)},
            "epochs": metrics["epochs"],
            "steps": metrics["steps"],
            "images": images,
            "manifest_keys_sha256": digest,
            "dataset": source,
            "final_loss": metrics["loss_last_epoch"],
            "knn_val": str(knn_val) if knn_val is not None else None,
            "metrics": split_run_facts(metrics)[0],   # the card is a DVC output: no timings, no resume step
            "seed": seed,
            "config": dataclasses.asdict(cfg),
            "derived": derived,
        }
        save_timm_folder(export, out_dir, card)
        write_json(card, out_dir / "model_card.json")
        if run_path is not None:
            finish(run_path)
    log.info("pretrain done: %s", metrics)
    return metrics
