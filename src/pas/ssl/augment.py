"""The CPU augmentation path: decode once (OpenCV, at a reduced scale where the crops allow), then each view's draw
applied with OpenCV on uint8 HWC arrays (pas.ssl.views.apply_view).

OpenCV's SIMD-optimised ops, each within a stated grey-level bound of torchvision's PIL ones (the tests): crop and
resize (area averaging where it shrinks, bilinear where it grows), flip, the four ColorJitter adjustments as the
same blends (with black, the mean grey, the grey image; hue as an add to H in HSV with H in 0..255), grayscale
(ITU-R 601, a grey view stays one channel through blur and solarisation), a true Gaussian blur of the drawn sigma
(DINO's utils.GaussianBlur passes it to PIL as the radius) and solarisation as a lookup table; the float
conversion and normalisation are the last step, or are left to the training device (`normalize=False`: uint8
views cross the worker and host-to-device boundaries at a quarter of the bytes). Run one OpenCV thread per
DataLoader worker (cv2.setNumThreads(1)), as benchmarks/input_pipeline.py times it.

libjpeg decodes at 1/2, 1/4 or 1/8 scale (OpenCV's IMREAD_REDUCED_COLOR_*, PIL's draft mode). The scale is chosen
from the drawn crops: the largest reduction at which every crop still has at least its output size in pixels, so
no view is upsampled more than it would be from the full image.
"""
from __future__ import annotations

import io
import random
from collections.abc import Callable

import cv2
import numpy as np
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


REDUCED = {1: cv2.IMREAD_COLOR_RGB, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
           8: cv2.IMREAD_REDUCED_COLOR_8}   # libjpeg's DCT scaling, as PIL's draft mode; reduced ones come BGR


def decode_for_views(data: bytes, specs: list[ViewSpec], rng: random.Random
                     ) -> tuple[np.ndarray, list[list[float]], float]:
    """(RGB image as HWC uint8, the views' draws in full-image pixels, full size / decoded size): the draws are
    made from the header's size, then a JPEG is decoded by OpenCV at the largest scale the crops allow (EXIF
    orientation ignored, as PIL does); another format, or one OpenCV cannot read, whole by PIL."""
    with Image.open(io.BytesIO(data)) as image:   # the header only
        width, height, jpeg = image.width, image.height, image.format == "JPEG"
    params = sample_views(specs, width, height, rng)
    reduce = draft_scale(params, specs)
    scale = max((s for s in REDUCED if s <= reduce), default=1) if jpeg else 1
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), REDUCED[scale] | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB")), params, 1.0
    if scale > 1:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return pixels, params, width / pixels.shape[1]


def cpu_views(data: bytes, specs: list[ViewSpec], rng: random.Random, normalize: bool = True) -> list[torch.Tensor]:
    """Every view of one encoded image, drawn from `rng`."""
    image, params, factor = decode_for_views(data, specs, rng)
    return [apply_view(image, spec, row, normalize, factor) for spec, row in zip(specs, params)]


def eval_transform(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic evaluation view: shorter side to `size`, centre crop, uint8 (3, S, S)."""
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.PILToTensor()])
