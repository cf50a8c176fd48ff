"""CLIP embeddings of every candidate image (generated + retrieved), computed once."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from pas.core.shards import decode_image, read_shard

log = logging.getLogger(__name__)

COLUMNS = ("key", "shard", "source", "concept", "prompt", "seed", "width", "height", "similarity", "pool_row",
           "pool_id", "url", "caption")  # a retrieved image keeps where it came from, through curation to exports


def pixel_hash(image: Image.Image) -> str:
    """Average hash: 64 bits of 'brighter than the mean' over an 8x8 grayscale thumbnail.

    Equal for re-encoded or resized copies of one image; closer variants are left to the
    embedding similarity.
    """
    thumb = np.asarray(image.convert("L").resize((8, 8), Image.BOX), dtype=np.float32)
    bits = np.packbits((thumb > thumb.mean()).ravel())
    return bits.tobytes().hex() if thumb.std() > 0 else ""


def candidate_rows(manifests: list[tuple[pa.Table, Path]]) -> list[dict[str, Any]]:
    """Union of source manifests in a fixed order with the shared columns; shard paths made repo-relative."""
    rows = []
    for table, shard_dir in manifests:
        for row in table.to_pylist():
            out = {c: row.get(c) for c in COLUMNS}
            out["shard"] = str(shard_dir / row["shard"])
            rows.append(out)
    return rows


def stream_images(rows: list[dict[str, Any]], stats: list[dict[str, Any]]) -> Iterator[Image.Image]:
    """Yield each candidate's image in row order, shard by shard; append per-image stats to `stats`."""
    by_shard: dict[str, dict[str, bytes]] = {}
    for row in rows:
        shard = row["shard"]
        if shard not in by_shard:
            by_shard = {shard: {key: jpeg for key, jpeg, _ in read_shard(shard)}}
        try:
            image = decode_image(by_shard[shard][row["key"]])
        except Exception:  # corrupt bytes or a key missing from its shard
            image = Image.new("RGB", (1, 1))
            stats.append({"decodable": False, "pixel_std": 0.0, "pixel_hash": ""})
        else:
            gray = np.asarray(image.convert("L"), dtype=np.float32)
            stats.append({"decodable": True, "pixel_std": float(gray.std()), "pixel_hash": pixel_hash(image)})
        yield image


def embed_candidates(rows: list[dict[str, Any]], encoder: Any,
                     known: dict[int, np.ndarray] | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(N, D) CLIP embeddings of every candidate and per-image stats; rows whose position is in `known` reuse
    that vector (a retrieved image the pool already embedded with this model) instead of a second CLIP pass."""
    known = known or {}
    stats: list[dict[str, Any]] = []
    images = (image for i, image in enumerate(stream_images(rows, stats)) if i not in known)
    fresh = encoder.encode_images(images, total=len(rows) - len(known), desc="embed")
    if not known:
        return fresh, stats
    dim = fresh.shape[1] if fresh.size else len(next(iter(known.values())))
    out = np.zeros((len(rows), dim), np.float32)
    others = [i for i in range(len(rows)) if i not in known]
    if others:
        out[others] = fresh
    for i, vector in known.items():
        out[i] = vector
    return out, stats
