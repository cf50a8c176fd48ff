"""Per-image fingerprints beyond the CLIP embedding: a content hash and crop-tolerant thumbnails.

- `content_hash`: sha256 of the stored image bytes; equal hashes are exact duplicates.
- `thumbnails`: grey-level box-average thumbnails (T x T, mean-centred, unit norm, so their dot
  product is a normalised cross-correlation) of an image or of a grid of crops of it. Evaluation
  images get every crop that removes 0..`max_crop` of each side (`steps` values per side, so steps**4
  crops); a candidate that is a resized, re-encoded or lightly cropped copy matches one of those crops
  far better than any other image does. Crops are computed as two small matrix products per image
  (separable box filters with exact fractional pixel coverage), never by resampling images.
"""
from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from PIL import Image

from pas.core.shards import decode_image, read_shard

WORK = 64  # images are first reduced to WORK x WORK grey levels
SIDE = 12  # thumbnails are SIDE x SIDE


def content_hash(data: bytes) -> str:
    """sha256 hex digest of the image bytes as stored."""
    return hashlib.sha256(data).hexdigest()


def grey(image: Image.Image) -> np.ndarray:
    """(WORK, WORK) float32 grey levels of an image (box-filtered)."""
    return np.asarray(image.convert("L").resize((WORK, WORK), Image.BOX), dtype=np.float32)


def _cover(lo: float, hi: float, side: int) -> np.ndarray:
    """(side, WORK) matrix averaging the pixels of [lo, hi) into `side` equal cells (fractional coverage)."""
    edges = np.linspace(lo, hi, side + 1)
    pixels = np.arange(WORK)
    weight = np.minimum(edges[1:, None], pixels[None, :] + 1) - np.maximum(edges[:-1, None], pixels[None, :])
    weight = np.clip(weight, 0.0, None)
    return weight / weight.sum(axis=1, keepdims=True)


def crop_fractions(max_crop: float, steps: int) -> np.ndarray:
    """The fractions of a side a crop may remove: `steps` values from 0 to max_crop."""
    return np.linspace(0.0, max_crop, steps) if max_crop > 0 else np.zeros(1)


def thumbnails(greys: np.ndarray, fractions: np.ndarray = np.zeros(1), side: int = SIDE) -> np.ndarray:
    """Crop-grid thumbnails: (M, len(fractions)**4, side*side) unit vectors for (M, WORK, WORK) grey images.

    Crop k removes fractions (top, bottom) x (left, right) in itertools.product order.
    """
    spans = [(a * WORK, WORK - b * WORK) for a, b in itertools.product(fractions, fractions)]
    cover = np.concatenate([_cover(lo, hi, side) for lo, hi in spans]).astype(np.float32)  # (S*side, WORK)
    n, s, c = len(greys), len(spans), cover.shape[0]
    # two large matrix products (many small ones are slow next to torch's and faiss's thread pools)
    cols = np.ascontiguousarray(greys, dtype=np.float32).reshape(n * WORK, WORK) @ cover.T  # (M*WORK, C): x cells
    cols = cols.reshape(n, WORK, c).transpose(1, 0, 2).reshape(WORK, n * c)  # (WORK, M*C)
    out = (cover @ cols).reshape(c, n, c)  # (C, M, C): y cells x images x x cells
    out = out.reshape(s, side, n, s, side).transpose(2, 0, 3, 1, 4).reshape(n, s * s, side * side)
    out -= out.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(out, axis=-1, keepdims=True)
    return np.divide(out, norm, out=np.zeros_like(out), where=norm > 1e-6)


def read_bytes(rows: list[dict[str, Any]]) -> Iterator[tuple[int, bytes]]:
    """(row index, stored image bytes) for the given rows, reading each shard once, in shard order."""
    for shard, positions in _by_shard(rows).items():
        wanted = {rows[i]["key"]: i for i in positions}
        for key, data, _ in read_shard(shard):
            if key in wanted:
                yield wanted[key], data


def read_fingerprints(rows: list[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
    """Content hash and (N, SIDE*SIDE) thumbnail of every candidate row.

    A missing or undecodable image gets an empty hash or a zero thumbnail (it matches nothing).
    """
    hashes = [""] * len(rows)
    thumbs = np.zeros((len(rows), SIDE * SIDE), np.float32)
    positions, greys = [], []
    for i, data in read_bytes(rows):
        hashes[i] = content_hash(data)
        try:
            greys.append(grey(decode_image(data)))
        except Exception:  # noqa: BLE001 - an undecodable image keeps a zero thumbnail
            continue
        positions.append(i)
        if len(positions) == 4096:
            thumbs[positions] = thumbnails(np.stack(greys))[:, 0]
            positions, greys = [], []
    if positions:
        thumbs[positions] = thumbnails(np.stack(greys))[:, 0]
    return hashes, thumbs


def read_images(rows: list[dict[str, Any]]) -> Iterator[tuple[int, Image.Image]]:
    """(row index, decoded image) for the given rows, shard by shard; unreadable ones are skipped."""
    for i, data in read_bytes(rows):
        try:
            yield i, decode_image(data)
        except Exception:  # noqa: BLE001 - skip what cannot be decoded
            continue


def _by_shard(rows: Iterable[dict[str, Any]]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row["shard"], []).append(i)
    return groups
