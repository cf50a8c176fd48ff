"""The CPU augmentation path: decode once (JPEG draft mode), then each view's draw applied with PIL on uint8.

Every step stays in PIL's uint8 images: crop and resize in one `Image.resize(box=..., reducing_gap=1.2)` call
(a crop at least 2.4x its output size is box-reduced by an integer factor first: about one grey level from
the direct resize, 40% faster), flip, the colour adjustments of torchvision's ColorJitter on PIL images,
pixel for pixel (ImageEnhance's blends with a constant image instead of its degenerate-image objects; hue
through HSV with the shift as one modular add instead of a numpy round trip), grayscale (a grey view stays one
band through blur and solarisation), PIL's Gaussian blur with the drawn radius (as DINO's utils.GaussianBlur
does, not a 23-pixel convolution) and solarisation;
the float conversion and normalisation are the last step, or are left to the training device
(`normalize=False`: uint8 views cross the worker and host-to-device boundaries at a quarter of the bytes).

JPEG draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale. The scale is chosen from the drawn crops:
the largest reduction at which every crop still has at least its output size in pixels, so no view is
upsampled more than it would be from the full image.
"""
from __future__ import annotations

import io
import math
import random
from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import v2

from pas.ssl.views import (  # noqa: F401  (re-exported: the methods' and the monitor's imports)
    SIMCLR_JITTER,
    STRONG_JITTER,
    X0,
    X1,
    Y0,
    Y1,
    ViewSpec,
    apply_view,
    byol_views,
    normalize_uint8,
    sample_views,
    simclr_view,
)

def draft_scale(params: list[list[float]], specs: list[ViewSpec]) -> float:
    """The largest reduction of the image at which every drawn crop keeps at least its output size."""
    return min(min(p[X1] - p[X0], p[Y1] - p[Y0]) / spec.size for p, spec in zip(params, specs))


def decode_for_views(data: bytes, specs: list[ViewSpec], rng: random.Random
                     ) -> tuple[Image.Image, list[list[float]], float]:
    """(RGB image, the views' draws in full-image pixels, full size / decoded size): the draws are made from the
    header's size, then a JPEG is decoded in draft mode at the largest scale the crops allow."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        params = sample_views(specs, width, height, rng)
        reduce = draft_scale(params, specs)
        if image.format == "JPEG" and reduce >= 2:
            image.draft("RGB", (math.ceil(width / reduce), math.ceil(height / reduce)))
        image.load()
        return image.convert("RGB"), params, width / image.width


def cpu_views(data: bytes, specs: list[ViewSpec], rng: random.Random, normalize: bool = True) -> list[torch.Tensor]:
    """Every view of one encoded image, drawn from `rng`."""
    image, params, factor = decode_for_views(data, specs, rng)
    return [apply_view(image, spec, row, normalize, factor) for spec, row in zip(specs, params)]


def eval_transform(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic evaluation view: shorter side to `size`, centre crop, uint8 (3, S, S)."""
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.PILToTensor()])
