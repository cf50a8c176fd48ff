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

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from pas.core.runtime import num_workers
from pas.transfer.config import FullConfig
from pas.transfer.features import normalise, prepare
from pas.transfer.inits import InitInfo
from pas.transfer.probe import HeadLoss

log = logging.getLogger(__name__)


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
    backbone group gets one more factor of layer_decay. Weight decay skips norms, biases and the names in the
    model's `no_weight_decay()` (a ViT's pos_embed and cls_token), as timm's create_optimizer_v2 does.
    """
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    skip = set(backbone.no_weight_decay()) if hasattr(backbone, "no_weight_decay") else set()
    groups = param_groups_layer_decay(backbone, weight_decay=cfg.weight_decay, no_weight_decay_list=skip,
                                      layer_decay=cfg.layer_decay)
    for group in groups:
        group["lr"] = cfg.lr * cfg.layer_decay * group.pop("lr_scale", 1.0)
    head_groups = param_groups_weight_decay(head, weight_decay=cfg.weight_decay)
    return groups + [{**group, "lr": cfg.lr} for group in head_groups if group["params"]]


@dataclasses.dataclass(frozen=True)
class DeviceSettings:
    """How a training loop drives its device: autocast dtype (None: float32), loss scaling, memory format, cuDNN
    autotuning and TF32 matmuls."""

    amp_dtype: torch.dtype | None = None
    grad_scaler: bool = False
    channels_last: bool = False
    cudnn_benchmark: bool = False
    tf32: bool = False


def device_settings(device_type: str, convolutional: bool, bf16_native: bool) -> DeviceSettings:
    """On a GPU: bf16 autocast where the GPU has it natively, else fp16 with a GradScaler; channels_last for
    convolutional backbones; cuDNN autotuning and TF32. On the CPU: float32 as before (results unchanged)."""
    if device_type != "cuda":
        return DeviceSettings()
    dtype = torch.bfloat16 if bf16_native else torch.float16
    return DeviceSettings(dtype, dtype == torch.float16, convolutional, True, True)


def is_convolutional(backbone: nn.Module) -> bool:
    """More than one Conv2d: a CNN (a ViT's only convolution is its patch embedding)."""
    return sum(isinstance(m, nn.Conv2d) for m in backbone.modules()) > 1


def settings_for(backbone: nn.Module, device: str) -> DeviceSettings:
    """device_settings for this backbone on `device` (native bf16 asked of the GPU, emulation not counted)."""
    kind = torch.device(device).type
    bf16 = kind == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return device_settings(kind, is_convolutional(backbone), bf16)


@contextlib.contextmanager
def device_flags(settings: DeviceSettings) -> Iterator[None]:
    """cuDNN autotuning and TF32 as `settings` ask, for the block only (the previous flags come back)."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if settings.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if settings.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _autocast(device: str, settings: DeviceSettings) -> contextlib.AbstractContextManager:
    """Autocast to settings.amp_dtype, or nothing."""
    if settings.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=settings.amp_dtype)


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


Crop = tuple[int, int, int, int, bool]   # y, x, h, w, flip


def crop_params(count: int, size: int, gen: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> list[Crop]:
    """`count` RandomResizedCrop boxes (torchvision's sampling: 10 attempts, then the whole image) and flips."""
    out = []
    for _ in range(count):
        for _ in range(10):
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
        out.append((y, x, h, w, float(torch.rand(1, generator=gen)) < 0.5))
    return out


def apply_crops(batch: torch.Tensor, crops: list[Crop]) -> torch.Tensor:
    """Each image's box resized back to the side (bilinear, antialiased), flipped where drawn."""
    size = batch.shape[-1]
    out = []
    for image, (y, x, h, w, flip) in zip(batch, crops, strict=True):
        crop = nn.functional.interpolate(image[None, :, y:y + h, x:x + w], size=(size, size), mode="bilinear",
                                         align_corners=False, antialias=True)[0]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out)


def random_resized_crop(batch: torch.Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """ImageNet training crops: per image a RandomResizedCrop (torchvision's sampling) back to the side, then a
    random horizontal flip."""
    return apply_crops(batch, crop_params(len(batch), batch.shape[-1], gen, scale, ratio))


def pad_crop_params(count: int, gen: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(offsets (count, 2), flips (count,)) of the CIFAR-style padded random crop."""
    pad = max(1, size // 8)
    return torch.randint(0, 2 * pad + 1, (count, 2), generator=gen), torch.rand(count, generator=gen) < 0.5


def apply_pad_crop(batch: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Crop each image out of it padded by 1/8 of its side (reflect) at its offset; flip where drawn."""
    size = batch.shape[-1]
    pad = max(1, size // 8)
    offsets, flips = params
    padded = nn.functional.pad(batch, (pad, pad, pad, pad), mode="reflect")
    out = torch.stack([padded[i, :, y:y + size, x:x + size] for i, (y, x) in enumerate(offsets.tolist())])
    return torch.where(flips.view(-1, 1, 1, 1).to(out.device), out.flip(-1), out)


def _augment(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random crop of the image padded by 1/8 of its side (reflect)."""
    return apply_pad_crop(batch, pad_crop_params(len(batch), gen, batch.shape[-1]))


class AugmentedBatches(torch.utils.data.Dataset):
    """Training batch i: the uint8 images at plan i's positions as [0, 1] floats, cropped and flipped with the
    parameters drawn for it in the main process, so DataLoader workers build batches without touching its
    generator (the same batches with any worker count)."""

    def __init__(self, pixels: torch.Tensor, plans: list[tuple[torch.Tensor, object]], kind: str) -> None:
        self.pixels, self.plans, self.kind = pixels, plans, kind

    def __len__(self) -> int:
        return len(self.plans)

    def __getitem__(self, i: int) -> torch.Tensor:
        idx, params = self.plans[i]
        images = self.pixels[idx].float() / 255.0
        return apply_crops(images, params) if self.kind == "random_resized_crop" else apply_pad_crop(images, params)


def training_plans(labels: int, size: int, cfg: FullConfig, gen: torch.Generator, kind: str
                   ) -> list[tuple[torch.Tensor, object]]:
    """Every epoch's batches (positions, augmentation parameters), drawn from `gen` in the order training used
    before the draws moved out of the loop: per epoch a permutation, then each batch's parameters."""
    steps_per_epoch = max(1, labels // cfg.batch_size)
    plans: list[tuple[torch.Tensor, object]] = []
    for _ in range(cfg.epochs):
        order = torch.randperm(labels, generator=gen)[: steps_per_epoch * cfg.batch_size]
        for idx in order.split(min(cfg.batch_size, len(order))):
            params = crop_params(len(idx), size, gen) if kind == "random_resized_crop" else \
                pad_crop_params(len(idx), gen, size)
            plans.append((idx, params))
    return plans


def finetune_full(backbone: nn.Module, head: nn.Module, loss_fn: HeadLoss, pixels: np.ndarray, labels: np.ndarray,
                  init: InitInfo, cfg: FullConfig, seed: int, device: str,
                  workers: int | None = None) -> list[dict[str, float]]:
    """Train backbone + head end to end on uint8 pixels (N, 3, S, S); return per-epoch loss and train top-1.

    Batches are augmented in `workers` DataLoader workers (default pas.core.runtime.num_workers()); on a GPU the
    steps run under autocast (bf16, or fp16 with loss scaling), channels_last for CNNs, cuDNN autotuning and TF32.
    """
    settings = settings_for(backbone, device)
    memory = torch.channels_last if settings.channels_last else torch.contiguous_format
    backbone = prepare(backbone, pixels.shape[-1], device).to(memory_format=memory).train()
    head = head.to(device).train()
    if cfg.freeze_bn_stats:  # the features the probe was fitted on are the eval-mode ones
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    opt = torch.optim.AdamW(layer_decay_groups(backbone, head, cfg))
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=settings.grad_scaler)
    steps_per_epoch = max(1, len(labels) // cfg.batch_size)  # drop the last partial batch (batch norm)
    total, warmup = cfg.epochs * steps_per_epoch, max(1, steps_per_epoch // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(pixels), torch.as_tensor(np.asarray(labels, dtype=np.int64))
    kind = cfg.augmentation(pixels.shape[-1])
    plans = training_plans(len(y), pixels.shape[-1], cfg, gen, kind)
    workers = num_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(AugmentedBatches(x, plans, kind), batch_size=None, num_workers=workers,
                                         pin_memory=settings.amp_dtype is not None)
    batches = iter(loader)
    history = []
    with device_flags(settings):
        for epoch in range(1, cfg.epochs + 1):
            loss_sum, correct, seen = 0.0, 0, 0
            for idx, _ in plans[(epoch - 1) * steps_per_epoch: epoch * steps_per_epoch]:
                images = normalise(next(batches).to(device, non_blocking=True), init.mean, init.std)
                with _autocast(device, settings):
                    loss, scores = loss_fn(head(backbone(images.contiguous(memory_format=memory))), y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
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
    """Class scores (N, C) of a fine-tuned backbone + head on uint8 pixels, in eval mode (autocast on a GPU)."""
    settings = settings_for(backbone, device)
    memory = torch.channels_last if settings.channels_last else torch.contiguous_format
    backbone = prepare(backbone, pixels.shape[-1], device).to(memory_format=memory).eval()
    head = head.to(device).eval()
    out = []
    with torch.inference_mode(), device_flags(settings):
        for start in range(0, len(pixels), batch_size):
            batch = torch.from_numpy(pixels[start:start + batch_size]).to(device)
            images = normalise(batch, init.mean, init.std).contiguous(memory_format=memory)
            with _autocast(device, settings):
                out.append(predict(head(backbone(images))).float().cpu())
    return torch.cat(out).numpy().astype(np.float32)
