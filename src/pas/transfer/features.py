"""Pixels and frozen features: resize + centre-crop once into uint8, then normalise per init and run a backbone."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from tqdm.auto import tqdm

from pas.core.iterate import batched
from pas.core.runtime import pick_device
from pas.data.downstream import SplitInfo, iter_image_batches

log = logging.getLogger(__name__)


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """RGB, shorter side -> size (bicubic), centre crop, (3, size, size) uint8."""
    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def eval_transform(data_config: dict[str, Any]) -> Callable[[Image.Image], np.ndarray]:
    """timm's evaluation transform for a pretrained cfg (resize to input/crop_pct with its interpolation, centre
    crop), ending in uint8 (3, H, W): timm's prefetcher form (timm/data/transforms_factory.py,
    transforms_imagenet_eval, use_prefetcher=True), normalised later on the device like every init's pixels."""
    from timm.data import create_transform

    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    transform = create_transform(**{k: data_config[k] for k in keys if k in data_config}, is_training=False,
                                 use_prefetcher=True)
    return lambda image: np.asarray(transform(image.convert("RGB")), dtype=np.uint8)  # a uint8 tensor or array


def load_pixels(info: SplitInfo, size: int, problems: list[str] | None = None,
                transform: Callable[[Image.Image], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A whole split as uint8 (N, 3, size, size) plus the positions of the items that decoded.

    `transform` (e.g. eval_transform of an init's pretrained cfg) replaces the default `preprocess(image, size)`.
    """
    arrays, kept = [], []
    for positions, images in iter_image_batches(info, problems=problems):
        arrays.extend(transform(image) if transform is not None else preprocess(image, size) for image in images)
        kept.append(positions)
    pixels = np.stack(arrays) if arrays else np.zeros((0, 3, size, size), dtype=np.uint8)
    return pixels, (np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64))


def normalise(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 or [0, 1] float (B, 3, H, W) -> float (B, 3, H, W) normalised with the init's mean and std."""
    pixels = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()
    mean_t = torch.tensor(mean, device=pixels.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t


def prepare(backbone: torch.nn.Module, image_size: int, device: str) -> torch.nn.Module:
    """Move a backbone to `device`; ViTs get their position embeddings resampled to image_size."""
    backbone = backbone.to(device)
    if hasattr(backbone, "set_input_size"):
        backbone.set_input_size(img_size=image_size)
    return backbone


def pixel_features(backbone: torch.nn.Module, pixels: np.ndarray, mean: Sequence[float], std: Sequence[float],
                   batch_size: int, device: str | None = None) -> np.ndarray:
    """Pooled, L2-normalised float32 features (N, D) of uint8 pixels (N, 3, S, S), in eval mode."""
    device = device or pick_device()
    backbone = prepare(backbone, pixels.shape[-1], device).eval()
    chunks = []
    with torch.inference_mode(), tqdm(total=len(pixels), desc="features", unit="img", leave=False) as bar:
        for start in range(0, len(pixels), batch_size):
            batch = torch.from_numpy(pixels[start:start + batch_size]).to(device)
            feats = backbone(normalise(batch, mean, std)).float()  # (B, D)
            chunks.append(torch.nn.functional.normalize(feats, dim=1).cpu())
            bar.update(len(batch))
    if not chunks:
        return np.zeros((0, int(getattr(backbone, "num_features", 0))), dtype=np.float32)
    return torch.cat(chunks).numpy().astype(np.float32)


def extract_features(backbone: torch.nn.Module, images: Iterable[Image.Image], image_size: int, batch_size: int,
                     device: str | None = None, total: int | None = None, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                     std: Sequence[float] = IMAGENET_DEFAULT_STD) -> np.ndarray:
    """Pooled backbone features of PIL `images` (a list or a stream), as L2-normalised float32 (N, D)."""
    chunks = [pixel_features(backbone, np.stack([preprocess(im, image_size) for im in batch]), mean, std,
                             batch_size, device) for batch in batched(images, batch_size)]
    if not chunks:
        return np.zeros((0, int(getattr(backbone, "num_features", 0))), dtype=np.float32)
    return np.concatenate(chunks)
