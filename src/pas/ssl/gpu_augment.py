"""The device augmentation path: JPEG decode and every view's draw applied as batched tensor ops on the GPU.

DataLoader workers only read the tar members, parse each JPEG header for its size and draw the views
(pas.ssl.views); the batch carries the encoded bytes and a (N, V, PARAMS) tensor of draws. On the
device, `torchvision.io.decode_jpeg(list, device="cuda")` decodes the batch with nvJPEG, then per view:
crop + resize of all images in one `roi_align` (adaptive sampling: an area average when shrinking, so no
aliasing), per-sample flip, colour jitter in each sample's own order, grayscale, Gaussian blur (grouped
separable convolution, one kernel per sample), solarisation and normalisation. The same code runs on CPU
tensors, which is how CI tests it.

Why torchvision rather than NVIDIA DALI: DALI (nvidia-dali-cuda120) has the same operators, a WebDataset
reader and a CPU backend, but its reader shards, shuffles and seeds on its own (shard_id/num_shards,
random_shuffle with a pipeline seed), so it would replace ViewStream's contract: every manifest key once
per epoch, equal counts per rank, draws seeded by (seed, epoch, key) whatever the split, and an exact
mid-epoch resume. Its CPU backend tests DALI's operators, not the draws pas trains with, and it is a
~1 GB CUDA-versioned wheel beside torch. torchvision is already installed, decodes a list of JPEGs on the
GPU in one call, and leaves the draws to pas, identical on the CPU and device paths.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from pas.ssl.augment import normalize_uint8
from pas.ssl.views import BRIGHTNESS, FLIP, GRAY, JITTER, ORDER, SIGMA, SOLARIZE, X0, Y1, ViewSpec

log = logging.getLogger(__name__)

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)   # torchvision's rgb_to_grayscale
PAD_BYTES = 1 << 29                     # crop a batch in chunks whose padded float copy stays under 512 MiB


def decode_batch(encoded: list[bytes], device: torch.device | str) -> list[Tensor]:
    """uint8 (3, H, W) RGB images on `device`: JPEGs decoded there in one call (nvJPEG on a GPU), others
    (PNG, WebP) decoded on the CPU and moved."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in encoded]
    jpeg = [i for i, b in enumerate(encoded) if b[:2] == b"\xff\xd8"]
    out: list[Tensor | None] = [None] * len(data)
    if jpeg:
        for i, image in zip(jpeg, decode_jpeg([data[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)):
            out[i] = image
    for i in set(range(len(data))) - set(jpeg):
        out[i] = decode_image(data[i], mode=ImageReadMode.RGB).to(device)
    return out  # type: ignore[return-value]


def crop_resize(images: list[Tensor], boxes: Tensor, size: int) -> Tensor:
    """(N, 3, size, size) floats in [0, 1]: image i's box (x0, y0, x1, y1 in pixels) resized, in one roi_align
    per chunk of images padded to a common size."""
    from torchvision.ops import roi_align

    height, width = max(i.shape[-2] for i in images), max(i.shape[-1] for i in images)
    chunk = max(1, PAD_BYTES // (12 * height * width))
    out = []
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        batch = torch.zeros(len(part), 3, height, width, device=part[0].device)
        for j, image in enumerate(part):
            batch[j, :, :image.shape[-2], :image.shape[-1]] = image
        index = torch.arange(len(part), device=batch.device, dtype=torch.float32)[:, None]
        rois = torch.cat([index, boxes[start:start + chunk].to(batch.device, torch.float32)], dim=1)
        out.append(roi_align(batch, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True))
    return torch.cat(out) / 255.0


def gray(x: Tensor) -> Tensor:
    """(N, 1, H, W) luminance of (N, 3, H, W) RGB."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b)[:, None]


def rgb_to_hsv(x: Tensor) -> Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV in [0, 1] (torchvision's _rgb2hsv)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.max(1).values, x.min(1).values
    same = maxc == minc
    span = torch.where(same, torch.ones_like(maxc), maxc - minc)
    s = (maxc - minc) / torch.where(same, torch.ones_like(maxc), maxc)
    rc, gc, bc = (maxc - r) / span, (maxc - g) / span, (maxc - b) / span
    h = ((maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
         + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc))
    return torch.stack([torch.fmod(h / 6.0 + 1.0, 1.0), s, maxc], 1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """(N, 3, H, W) HSV in [0, 1] -> RGB (torchvision's _hsv2rgb)."""
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p, q, t = ((v * (1.0 - s * a)).clamp(0.0, 1.0) for a in (torch.ones_like(f), f, 1.0 - f))
    sectors = torch.stack([torch.stack(c, 1) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))], 1)
    return sectors.gather(2, i[:, None, None].expand(-1, 3, 1, -1, -1)).squeeze(2)


def adjust(x: Tensor, op: int, factor: Tensor) -> Tensor:
    """One of ColorJitter's adjustments (0 brightness, 1 contrast, 2 saturation, 3 hue) with a factor per sample."""
    f = factor.view(-1, 1, 1, 1).to(x.dtype)
    if op == 0:
        return (x * f).clamp(0.0, 1.0)
    if op == 1:
        mean = gray(x).mean(dim=(1, 2, 3), keepdim=True)
        return (f * x + (1 - f) * mean).clamp(0.0, 1.0)
    if op == 2:
        return (f * x + (1 - f) * gray(x)).clamp(0.0, 1.0)
    hsv = rgb_to_hsv(x)
    hue = torch.remainder(hsv[:, :1] + f, 1.0)
    return hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], 1))


def color_jitter(x: Tensor, params: Tensor) -> Tensor:
    """Each sample's drawn adjustments in its drawn order (samples without jitter untouched)."""
    applied = params[:, JITTER] > 0
    order = params[:, ORDER].long()
    for position in range(4):
        for op in range(4):
            rows = torch.nonzero(applied & (order[:, position] == op)).flatten()
            if len(rows):
                x[rows] = adjust(x[rows], op, params[rows, BRIGHTNESS + op])
    return x


def gaussian_blur(x: Tensor, sigma: Tensor, max_sigma: float) -> Tensor:
    """Blur sample i with sigma[i] (0: untouched): separable kernels of radius ceil(3 max_sigma), edges replicated
    as PIL's blur does, one grouped convolution per axis."""
    rows = torch.nonzero(sigma > 0).flatten()
    if not len(rows):
        return x
    radius = math.ceil(3 * max_sigma)
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma[rows].to(x.device, x.dtype)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / s) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(3, 0)           # (3m, k)
    part = x[rows].reshape(1, -1, *x.shape[-2:])                                      # (1, 3m, H, W)
    channels = part.shape[1]
    part = F.conv2d(F.pad(part, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None], groups=channels)
    part = F.conv2d(F.pad(part, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=channels)
    x[rows] = part.reshape(len(rows), 3, *x.shape[-2:])
    return x


def apply_views(images: list[Tensor], params: Tensor, specs: list[ViewSpec], normalize: bool = True
                ) -> list[Tensor]:
    """One (N, 3, S, S) batch per view from decoded uint8 images and their draws (N, V, PARAMS)."""
    views = []
    for v, spec in enumerate(specs):
        p = params[:, v].to(images[0].device, torch.float32)
        x = crop_resize(images, p[:, X0:Y1 + 1], spec.size)
        flip = p[:, FLIP] > 0
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        x = color_jitter(x, p)
        x = torch.where((p[:, GRAY] > 0).view(-1, 1, 1, 1), gray(x).expand_as(x), x)
        x = gaussian_blur(x, p[:, SIGMA], spec.sigma[1])
        solar = (p[:, SOLARIZE] > 0).view(-1, 1, 1, 1) & (x >= 128 / 255)
        x = torch.where(solar, 1.0 - x, x)
        views.append(normalize_uint8(x) if normalize else x)
    return views


def device_views(encoded: list[bytes], params: Tensor, specs: list[ViewSpec], device: torch.device | str
                 ) -> list[Tensor]:
    """Decode a batch's encoded images on `device` and return its normalised views there."""
    return apply_views(decode_batch(encoded, device), params, specs)


class DeviceViews(L.Callback):
    """Turn each training batch into the method's views on the training device, before training_step sees it:
    decode and augment the encoded images of the device path, or normalise the CPU path's uint8 views."""

    def __init__(self, specs: list[ViewSpec]) -> None:
        self.specs = specs

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if "encoded" in batch:
            batch["views"] = device_views(batch.pop("encoded"), batch.pop("params"), self.specs, pl_module.device)
        else:
            batch["views"] = [view if view.is_floating_point() else normalize_uint8(view) for view in batch["views"]]
