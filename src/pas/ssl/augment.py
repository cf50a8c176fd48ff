"""Per-view augmentations (PIL image -> normalised (3, S, S) float tensor) for the SSL methods.

One builder covers the SimCLR / BYOL / DINO family: random resized crop, flip, colour jitter
(0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale p 0.2, then optional Gaussian blur and solarisation
with the probabilities a method asks for per view.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2


def blur_kernel(size: int) -> int:
    """Odd Gaussian kernel of about 10% of the crop side (23 px at 224), at least 3."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


SIMCLR_JITTER = (0.4, 0.4, 0.2, 0.1)   # brightness, contrast, saturation, hue (SimCLR/BYOL/DINO)
STRONG_JITTER = (0.8, 0.8, 0.8, 0.2)   # SwAV (src/multicropdataset.py:76) and LeJEPA (MINIMAL.md:104)


def simclr_view(size: int, scale: tuple[float, float] = (0.08, 1.0), blur: float = 0.0, solarize: float = 0.0,
                jitter: tuple[float, float, float, float] = SIMCLR_JITTER) -> Callable[[Image.Image], torch.Tensor]:
    """One view: crop to `size` at `scale`, flip, jitter (p 0.8), grayscale, blur with p `blur`, solarise with p
    `solarize`."""
    steps: list[Callable] = [
        v2.RandomResizedCrop(size, scale=scale, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(*jitter)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    if blur > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(blur_kernel(size), sigma=(0.1, 2.0))], p=blur))
    steps.append(v2.PILToTensor())
    if solarize > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=solarize))   # on uint8: invert pixels >= 128
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    return v2.Compose(steps)


def byol_views(size: int) -> list[Callable[[Image.Image], torch.Tensor]]:
    """BYOL's asymmetric pair: blur always on view 1; blur 0.1 and solarisation 0.2 on view 2."""
    return [simclr_view(size, blur=1.0), simclr_view(size, blur=0.1, solarize=0.2)]


def eval_transform(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic evaluation view: shorter side to `size`, centre crop, uint8 (3, S, S)."""
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.PILToTensor()])


def normalize_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) uint8 -> ImageNet-normalised float32 on the same device."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std
