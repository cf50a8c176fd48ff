"""What a view is (ViewSpec: the official parameters), its random draw per image (sample_view), and the draw
applied to one PIL image on uint8 (apply_view, the CPU path's per-view work).

Both augmentation paths apply the same draw: the CPU path with PIL in DataLoader workers
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

import numpy as np
import torch
from PIL import Image, ImageChops, ImageFilter, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import functional as F

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


REDUCING_GAP = 1.2   # Image.resize: a crop >= 2.4x its output size is box-reduced by an integer factor first


def _blend_with(level: int, image: Image.Image, factor: float) -> Image.Image:
    """Image.blend of a constant grey `level` with `image` (ImageEnhance's degenerate-image blend)."""
    return Image.blend(Image.new(image.mode, image.size, (level,) * len(image.getbands())), image, factor)


def adjust_brightness(image: Image.Image, factor: float) -> Image.Image:
    """ImageEnhance.Brightness (torchvision's adjust_brightness on PIL): a blend with black."""
    return _blend_with(0, image, factor)


def adjust_contrast(image: Image.Image, factor: float) -> Image.Image:
    """ImageEnhance.Contrast: a blend with the mean grey level, rounded (the mean from the L histogram)."""
    histogram = np.asarray(image.convert("L").histogram(), dtype=np.float64)
    return _blend_with(int(histogram @ np.arange(256) / histogram.sum() + 0.5), image, factor)


def adjust_saturation(image: Image.Image, factor: float) -> Image.Image:
    """ImageEnhance.Color: a blend with the image's grey version."""
    return Image.blend(image.convert("L").convert(image.mode), image, factor)


def adjust_hue(image: Image.Image, factor: float) -> Image.Image:
    """torchvision's adjust_hue on PIL (_functional_pil.py: HSV, H += uint8(factor x 255) wrapping, back to RGB),
    the H shift as one modular add of a constant instead of a round trip through numpy."""
    hsv = image.convert("HSV")
    shift = int(np.array(factor * 255).astype(np.uint8))
    return ImageChops.add_modulo(hsv, Image.new("HSV", hsv.size, (shift, 0, 0))).convert("RGB")


ADJUST = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)   # ColorJitter's four, on PIL


def apply_view(image: Image.Image, spec: ViewSpec, row: list[float], normalize: bool = True,
               factor: float = 1.0) -> torch.Tensor:
    """One view of `image` for its draw `row` (crop box in pixels of an image `factor` x larger): uint8
    (3, S, S), or normalised float32 with `normalize`. A grey view stays one band through blur and solarisation
    (the same pixels as three equal bands, a third of the work)."""
    box = tuple(v / factor for v in row[X0:Y1 + 1])
    view = image.resize((spec.size, spec.size), Image.BILINEAR, box=box, reducing_gap=REDUCING_GAP)
    if row[FLIP]:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if row[JITTER]:
        factors = row[BRIGHTNESS:HUE + 1]
        for index in row[ORDER]:
            view = ADJUST[int(index)](view, factors[int(index)])
    if row[GRAY]:
        view = view.convert("L")
    if row[SIGMA] > 0:
        view = view.filter(ImageFilter.GaussianBlur(radius=row[SIGMA]))
    if row[SOLARIZE]:
        view = ImageOps.solarize(view, 128)   # inverts pixels >= 128, as DINO's Solarization
    pixels = F.pil_to_tensor(view)
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)   # collate and normalisation copy it
    return normalize_uint8(pixels[None])[0] if normalize else pixels


def normalize_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) uint8 (or floats in [0, 1]) -> ImageNet-normalised float32 on the same device."""
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD, device=pixels.device).view(1, 3, 1, 1)
    scaled = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()
    return (scaled - mean) / std
