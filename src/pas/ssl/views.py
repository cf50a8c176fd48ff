"""What a view is (ViewSpec: the official parameters), its random draw per image (sample_view), and the draw
applied to one RGB image on uint8 with OpenCV (apply_view, the CPU path's per-view work).

Both augmentation paths apply the same draw: the CPU path with OpenCV in DataLoader workers
(pas.ssl.augment), the device path as batched tensor ops after the batch reached the GPU
(pas.ssl.gpu_augment). A draw depends only on the image's size and a generator seeded by
(seed, epoch, key), so it is deterministic for a seed, independent between the images of a
batch, and the same whichever path, rank or worker applies it.

The draws follow the torchvision transforms the official code bases use: RandomResizedCrop.get_params
(10 tries, then a centre crop), RandomHorizontalFlip, RandomApply([ColorJitter], p) with ColorJitter.get_params
(a random order of the four adjustments), RandomGrayscale, and DINO's utils.py GaussianBlur (applied when
random() <= p, radius uniform in (0.1, 2)) and Solarization (random() < p) (facebookresearch/dino utils.py:36-68).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

SIMCLR_JITTER = (0.4, 0.4, 0.2, 0.1)   # brightness, contrast, saturation, hue (SimCLR/BYOL/DINO main_dino.py)
STRONG_JITTER = (0.8, 0.8, 0.8, 0.2)   # SwAV (src/multicropdataset.py:76) and LeJEPA (MINIMAL.md:104)

# the layout of one view's draw (a row of floats; the device path receives them as a tensor)
X0, Y0, X1, Y1, FLIP, JITTER, BRIGHTNESS, CONTRAST, SATURATION, HUE = range(10)
ORDER = slice(10, 14)                   # the order of the four colour adjustments (0 b, 1 c, 2 s, 3 h)
GRAY, SIGMA, SOLARIZE = 14, 15, 16
PARAMS = 17


@dataclass(frozen=True)
class ViewSpec:
    """One view: random resized crop to `size` at `scale`/`ratio`, flip, colour jitter with p `jitter_p`, grayscale,
    Gaussian blur with p `blur` (sigma uniform in `sigma`), solarisation with p `solarize`, ImageNet normalisation.
    Called on a PIL image, it applies itself on the CPU (torch's global generator draws)."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    jitter: tuple[float, float, float, float] = SIMCLR_JITTER
    jitter_p: float = 0.8
    grayscale: float = 0.2
    blur: float = 0.0
    sigma: tuple[float, float] = (0.1, 2.0)
    solarize: float = 0.0

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """The normalised float (3, size, size) view of `image` (the CPU path, drawn from torch's generator)."""
        rng = random.Random(int(torch.randint(0, 2**62, ())))
        return apply_view(image, self, sample_view(self, image.width, image.height, rng), normalize=True)


def crop_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
             rng: random.Random) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a random resized crop, as torchvision's RandomResizedCrop.get_params draws it."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            return left, top, left + w, top + h
    aspect = width / height                  # fallback: the whole image, clamped to the ratio range
    if aspect < min(ratio):
        w, h = width, round(width / min(ratio))
    elif aspect > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def sample_view(spec: ViewSpec, width: int, height: int, rng: random.Random) -> list[float]:
    """One view's random draw for an image of width x height, as a row of PARAMS floats."""
    row = [0.0] * PARAMS
    row[X0:Y1 + 1] = crop_box(width, height, spec.scale, spec.ratio, rng)
    row[FLIP] = float(rng.random() < spec.flip)
    row[BRIGHTNESS:HUE + 1] = [1.0, 1.0, 1.0, 0.0]
    row[ORDER] = [0.0, 1.0, 2.0, 3.0]
    if rng.random() < spec.jitter_p:
        b, c, s, h = spec.jitter
        row[JITTER] = 1.0
        row[ORDER] = [float(i) for i in rng.sample(range(4), 4)]
        row[BRIGHTNESS:HUE + 1] = [rng.uniform(max(0.0, 1 - b), 1 + b), rng.uniform(max(0.0, 1 - c), 1 + c),
                                   rng.uniform(max(0.0, 1 - s), 1 + s), rng.uniform(-h, h)]
    row[GRAY] = float(rng.random() < spec.grayscale)
    if spec.blur > 0 and rng.random() <= spec.blur:
        row[SIGMA] = rng.uniform(*spec.sigma)
    row[SOLARIZE] = float(spec.solarize > 0 and rng.random() < spec.solarize)
    return row


def sample_views(specs: list[ViewSpec], width: int, height: int, rng: random.Random) -> list[list[float]]:
    """Every view's draw, in order, from one generator."""
    return [sample_view(spec, width, height, rng) for spec in specs]


def simclr_view(size: int, scale: tuple[float, float] = (0.08, 1.0), blur: float = 0.0, solarize: float = 0.0,
                jitter: tuple[float, float, float, float] = SIMCLR_JITTER) -> ViewSpec:
    """One view: crop to `size` at `scale`, flip, jitter (p 0.8), grayscale (p 0.2), blur with p `blur`,
    solarise with p `solarize`."""
    return ViewSpec(size, scale=tuple(scale), blur=blur, solarize=solarize, jitter=tuple(jitter))


def byol_views(size: int) -> list[ViewSpec]:
    """BYOL's asymmetric pair: blur always on view 1; blur 0.1 and solarisation 0.2 on view 2."""
    return [simclr_view(size, blur=1.0), simclr_view(size, blur=0.1, solarize=0.2)]


RGB_TO_GREY = cv2.COLOR_RGB2GRAY           # ITU-R 601 weights (0.299, 0.587, 0.114), as PIL's convert("L")
HUE_SPACE = (cv2.COLOR_RGB2HSV_FULL, cv2.COLOR_HSV2RGB_FULL)   # H in 0..255, as PIL's HSV mode
SOLARIZE_LUT = np.array([i if i < 128 else 255 - i for i in range(256)], dtype=np.uint8)   # DINO's solarize(128)


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """torchvision's adjust_brightness (ImageEnhance.Brightness): a blend with black, factor x image."""
    return cv2.convertScaleAbs(image, alpha=factor)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """ImageEnhance.Contrast: a blend with the grey image's mean level, rounded to an integer as PIL does."""
    level = int(cv2.mean(cv2.cvtColor(image, RGB_TO_GREY))[0] + 0.5)
    return cv2.addWeighted(image, factor, image, 0.0, (1 - factor) * level)   # saturates (no abs: factor > 1)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """ImageEnhance.Color: a blend with the image's grey version."""
    grey = cv2.cvtColor(cv2.cvtColor(image, RGB_TO_GREY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(image, factor, grey, 1 - factor, 0)


def adjust_hue(image: np.ndarray, factor: float) -> np.ndarray:
    """torchvision's adjust_hue on PIL (_functional_pil.py: HSV, H += uint8(factor x 255) wrapping, back to RGB),
    the shift as a lookup table on the H channel."""
    shift = int(np.array(factor * 255).astype(np.uint8))
    identity = np.arange(256, dtype=np.uint8)
    table = np.stack([(identity + shift).astype(np.uint8), identity, identity], axis=-1)[:, None, :]
    return cv2.cvtColor(cv2.LUT(cv2.cvtColor(image, HUE_SPACE[0]), table), HUE_SPACE[1])


ADJUST = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)   # ColorJitter's four


def crop_resize(image: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """The box (x0, y0, x1, y1, rounded to whole pixels) of an HWC image resized to size x size: area
    averaging where it shrinks (antialiased, as PIL's bilinear filter), bilinear where it grows."""
    x0, y0, x1, y1 = (round(v) for v in box)
    crop = image[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
    height, width = crop.shape[:2]
    if (width > size) != (height > size):   # one side shrinks, the other grows: the shrinking one first, by area
        crop = cv2.resize(crop, (size, height) if width > size else (width, size), interpolation=cv2.INTER_AREA)
    shrink = crop.shape[0] > size and crop.shape[1] > size
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def apply_view(image: np.ndarray | Image.Image, spec: ViewSpec, row: list[float], normalize: bool = True,
               factor: float = 1.0) -> torch.Tensor:
    """One view of an RGB image (HWC uint8 array, or PIL) for its draw `row` (crop box in pixels of an image
    `factor` x larger), with OpenCV on uint8: uint8 (3, S, S), or normalised float32 with `normalize`. A grey
    view stays one channel through blur and solarisation (the same pixels as three equal bands)."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    view = crop_resize(image, tuple(v / factor for v in row[X0:Y1 + 1]), spec.size)
    if row[FLIP]:
        view = cv2.flip(view, 1)
    if row[JITTER]:
        factors = row[BRIGHTNESS:HUE + 1]
        for index in row[ORDER]:
            view = ADJUST[int(index)](view, factors[int(index)])
    if row[GRAY]:
        view = cv2.cvtColor(view, RGB_TO_GREY)
    if row[SIGMA] > 0:   # a true Gaussian of the drawn sigma (DINO passes it to PIL as the radius), edges repeated
        view = cv2.GaussianBlur(view, (0, 0), row[SIGMA], borderType=cv2.BORDER_REPLICATE)
    if row[SOLARIZE]:
        view = cv2.LUT(view, SOLARIZE_LUT)   # inverts pixels >= 128, as DINO's Solarization
    pixels = torch.from_numpy(view)
    pixels = pixels[None].expand(3, -1, -1) if pixels.ndim == 2 else pixels.permute(2, 0, 1)   # collate copies
    return normalize_uint8(pixels[None])[0] if normalize else pixels


def normalize_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) uint8 (or floats in [0, 1]) -> ImageNet-normalised float32 on the same device."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=pixels.device).view(1, 3, 1, 1)
    scaled = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()
    return (scaled - mean) / std
