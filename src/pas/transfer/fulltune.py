"""Full fine-tuning of backbone + head with layer-wise learning-rate decay (BEiT/MAE recipe, timm's layer groups).

The head trains at `lr`; backbone layer group i of L at lr * layer_decay ** (L + 1 - i), so the stem
moves least. AdamW, linear warm-up over the first epoch's 10% then cosine to 0. Augmentation (`augment`): the
ImageNet recipe's RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) + flip at ImageNet resolutions (auto: >= 128 px),
CIFAR-style flips and padded random crops below that.
The head sees L2-normalised features and, by default, starts from the linear probe (LP-FT, Kumar et al.
2022), so a short run refines a working classifier instead of distorting features under a random head.
Batch norm keeps its running statistics by default, so training starts from the very features the
probe saw (batch statistics of a 64-image batch differ a lot from them, most of all for a random init).
On the CPU the default is short: a stratified subset of `max_train_images` and a few epochs.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from pas.core.config import require
from pas.transfer.features import normalise, prepare
from pas.transfer.inits import InitInfo
from pas.transfer.probe import HeadLoss

log = logging.getLogger(__name__)


AUGMENTS = ("auto", "random_resized_crop", "pad_crop")
IMAGENET_MIN_SIZE = 128  # auto: from this side up the ImageNet recipe's crops, below it CIFAR's


@dataclasses.dataclass(frozen=True)
class FullConfig:
    """params.finetune.full: end-to-end fine-tuning settings."""

    epochs: int = 1
    max_train_images: int = 200  # stratified subset of the train split; 0 = all of it
    batch_size: int = 64
    lr: float = 0.0001  # the head's; backbone layers get lr * layer_decay ** depth-from-top
    layer_decay: float = 0.65
    weight_decay: float = 0.05
    probe_init: bool = True  # LP-FT: start the head from a linear probe on the frozen features
    freeze_bn_stats: bool = True  # batch norm keeps its running statistics (affine weights still train)
    augment: str = "auto"  # auto | random_resized_crop (ImageNet) | pad_crop (CIFAR); auto: RRC from 128 px

    def validate(self, prefix: str) -> None:
        """Raise a ConfigError naming the first out-of-range value."""
        require(self.epochs >= 1, f"{prefix}.epochs", self.epochs, "use an integer >= 1")
        require(self.max_train_images >= 0, f"{prefix}.max_train_images", self.max_train_images,
                "use 0 (all) or a positive integer")
        require(self.batch_size >= 2, f"{prefix}.batch_size", self.batch_size, "use an integer >= 2 (batch norm)")
        require(self.lr > 0, f"{prefix}.lr", self.lr, "use a number > 0")
        require(0 < self.layer_decay <= 1, f"{prefix}.layer_decay", self.layer_decay, "use a number in (0, 1]")
        require(self.weight_decay >= 0, f"{prefix}.weight_decay", self.weight_decay, "use a number >= 0")
        require(self.augment in AUGMENTS, f"{prefix}.augment", self.augment, f"use one of {', '.join(AUGMENTS)}")

    def augmentation(self, image_size: int) -> str:
        """The training augmentation at this resolution: `augment`, with auto resolved."""
        if self.augment != "auto":
            return self.augment
        return "random_resized_crop" if image_size >= IMAGENET_MIN_SIZE else "pad_crop"


class NormalisedHead(nn.Module):
    """L2-normalise pooled features, standardise them with fixed statistics, then `head` (LP-FT).

    With the linear probe's mean/std and weights the head starts as the probe did on frozen features;
    folding the standardisation into the weights instead would give ill-conditioned, huge logits.
    """

    def __init__(self, head: nn.Module, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("mean", torch.as_tensor(mean if mean is not None else 0.0, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std if std is not None else 1.0, dtype=torch.float32))

    def forward(self, feats: torch.Tensor) -> object:
        """(B, D) pooled features -> the inner head's output."""
        return self.head((nn.functional.normalize(feats, dim=1) - self.mean) / self.std)


def layer_decay_groups(backbone: nn.Module, head: nn.Module, cfg: FullConfig) -> list[dict]:
    """AdamW parameter groups: timm's layer groups of the backbone with decayed lr, then the head at cfg.lr.

    timm gives a headless backbone's top group scale 1; our head sits one level above it, so every
    backbone group gets one more factor of layer_decay.
    """
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(backbone, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
    for group in groups:
        group["lr"] = cfg.lr * cfg.layer_decay * group.pop("lr_scale", 1.0)
    groups.append({"params": [p for p in head.parameters() if p.requires_grad], "lr": cfg.lr,
                   "weight_decay": cfg.weight_decay})
    return groups


def subset_positions(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most `limit` positions (0 = all), stratified: each class keeps its share, deterministic in seed."""
    if limit <= 0 or limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        picked.append(members[:max(1, round(limit * len(members) / len(labels)))])
    return np.sort(np.concatenate(picked))


def random_resized_crop(batch: torch.Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """ImageNet training crops: per image a RandomResizedCrop (torchvision's sampling) back to the side, then a
    random horizontal flip."""
    size = batch.shape[-1]
    out = []
    for image in batch:
        for _ in range(10):   # torchvision's attempts, then the whole image
            area = size * size * float(torch.empty(1).uniform_(*scale, generator=gen))
            log_ratio = torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
            aspect = math.exp(float(log_ratio))
            w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < w <= size and 0 < h <= size:
                y = int(torch.randint(0, size - h + 1, (1,), generator=gen))
                x = int(torch.randint(0, size - w + 1, (1,), generator=gen))
                break
        else:
            y, x, h, w = 0, 0, size, size
        crop = image[None, :, y:y + h, x:x + w]
        crop = nn.functional.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                                         antialias=True)[0]
        out.append(crop.flip(-1) if float(torch.rand(1, generator=gen)) < 0.5 else crop)
    return torch.stack(out)


def _augment(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random crop of the image padded by 1/8 of its side (reflect)."""
    size = batch.shape[-1]
    pad = max(1, size // 8)
    padded = nn.functional.pad(batch, (pad, pad, pad, pad), mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (len(batch), 2), generator=gen).tolist()
    flips = torch.rand(len(batch), generator=gen) < 0.5
    out = torch.stack([padded[i, :, y:y + size, x:x + size] for i, (y, x) in enumerate(offsets)])
    return torch.where(flips.view(-1, 1, 1, 1).to(out.device), out.flip(-1), out)


def finetune_full(backbone: nn.Module, head: nn.Module, loss_fn: HeadLoss, pixels: np.ndarray, labels: np.ndarray,
                  init: InitInfo, cfg: FullConfig, seed: int, device: str) -> list[dict[str, float]]:
    """Train backbone + head end to end on uint8 pixels (N, 3, S, S); return per-epoch loss and train top-1."""
    backbone, head = prepare(backbone, pixels.shape[-1], device).train(), head.to(device).train()
    if cfg.freeze_bn_stats:  # the features the probe was fitted on are the eval-mode ones
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    opt = torch.optim.AdamW(layer_decay_groups(backbone, head, cfg))
    steps_per_epoch = max(1, len(labels) // cfg.batch_size)  # drop the last partial batch (batch norm)
    total, warmup = cfg.epochs * steps_per_epoch, max(1, steps_per_epoch // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(pixels), torch.as_tensor(np.asarray(labels, dtype=np.int64))
    augment = random_resized_crop if cfg.augmentation(pixels.shape[-1]) == "random_resized_crop" else _augment
    history = []
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(y), generator=gen)[: steps_per_epoch * cfg.batch_size]
        loss_sum, correct, seen = 0.0, 0, 0
        for idx in order.split(min(cfg.batch_size, len(order))):
            images = normalise(augment(x[idx].float() / 255.0, gen).to(device), init.mean, init.std)
            loss, scores = loss_fn(head(backbone(images)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((scores.detach().argmax(1).cpu() == y[idx]).sum())
            seen += len(idx)
        history.append({"epoch": epoch, "loss": loss_sum / seen, "train_top1": correct / seen})
        log.info("full fine-tune epoch %d/%d: loss %.4f, train top-1 %.3f", epoch, cfg.epochs,
                 history[-1]["loss"], history[-1]["train_top1"])
    return history


def predict_full(backbone: nn.Module, head: nn.Module, predict: Callable[[object], torch.Tensor], pixels: np.ndarray,
                 init: InitInfo, batch_size: int, device: str) -> np.ndarray:
    """Class scores (N, C) of a fine-tuned backbone + head on uint8 pixels, in eval mode."""
    backbone, head = prepare(backbone, pixels.shape[-1], device).eval(), head.to(device).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            batch = torch.from_numpy(pixels[start:start + batch_size]).to(device)
            out.append(predict(head(backbone(normalise(batch, init.mean, init.std)))).float().cpu())
    return torch.cat(out).numpy().astype(np.float32)
