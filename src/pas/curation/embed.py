"""CLIP embeddings of every candidate image (generated + retrieved), computed once."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from pas.core.runtime import pick_device
from pas.core.scaleout import map_on_ray, ray_address
from pas.core.shards import decode_image, read_shard
from pas.models.clip import ClipEncoder

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


def image_stats(data: bytes | None) -> tuple[Image.Image, dict[str, Any]]:
    """A candidate's decoded image and its stats; a 1x1 black image and decodable False for bad or missing bytes."""
    try:
        if data is None:
            raise KeyError("missing from its shard")
        image = decode_image(data)
    except Exception:  # corrupt bytes or a key missing from its shard
        return Image.new("RGB", (1, 1)), {"decodable": False, "pixel_std": 0.0, "pixel_hash": ""}
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    return image, {"decodable": True, "pixel_std": float(gray.std()), "pixel_hash": pixel_hash(image)}


def stream_images(rows: list[dict[str, Any]], stats: list[dict[str, Any]]) -> Iterator[Image.Image]:
    """Yield each candidate's image in row order, shard by shard; append per-image stats to `stats`."""
    by_shard: dict[str, dict[str, bytes]] = {}
    for row in rows:
        shard = row["shard"]
        if shard not in by_shard:
            by_shard = {shard: {key: jpeg for key, jpeg, _ in read_shard(shard)}}
        image, stat = image_stats(by_shard[shard].get(row["key"]))
        stats.append(stat)
        yield image


class CandidateImages:
    """Row i of the candidates as (image, stats), or (None, stats) for a row in `skip` (its vector is known): an
    indexable source for ClipEncoder.encode_source, so decoding and the stats run in DataLoader workers. Each copy
    (one per worker) keeps the members of the shard it read last; rows come shard by shard."""

    def __init__(self, rows: list[dict[str, Any]], skip: set[int] | None = None) -> None:
        self.rows, self.skip = rows, skip or set()
        self._shard: str | None = None
        self._members: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Image.Image | None, dict[str, Any]]:
        row = self.rows[i]
        if row["shard"] != self._shard:
            self._shard, self._members = row["shard"], {key: jpeg for key, jpeg, _ in read_shard(row["shard"])}
        image, stat = image_stats(self._members.get(row["key"]))
        return (None if i in self.skip else image), stat


def embed_candidates(rows: list[dict[str, Any]], encoder: Any,
                     known: dict[int, np.ndarray] | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(N, D) CLIP embeddings of every candidate and per-image stats; rows whose position is in `known` reuse
    that vector (a retrieved image the pool already embedded with this model) instead of a second CLIP pass.
    Decoding, stats and the CLIP preprocess run in DataLoader workers (ClipEncoder.encode_source)."""
    known = known or {}
    fresh, stats = encoder.encode_source(CandidateImages(rows, set(known)), desc="embed")
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


def fresh_slices(rows: int, known: set[int], fresh_per_slice: int) -> list[range]:
    """Contiguous row ranges that each hold `fresh_per_slice` rows to embed (the last may hold fewer): with a
    multiple of the encoder's batch size, every CLIP batch is the one a single pass would have made."""
    slices, start, fresh = [], 0, 0
    for i in range(rows):
        fresh += i not in known
        if fresh == fresh_per_slice:
            slices.append(range(start, i + 1))
            start, fresh = i + 1, 0
    if start < rows:
        slices.append(range(start, rows))
    return slices


def _slice_worker(clip_dir: str) -> Any:
    """Inside a Ray actor: a CLIP encoder on the actor's device, as a function of one slice task."""
    encoder = ClipEncoder(clip_dir, pick_device())
    return lambda task: embed_candidates(task[0], encoder, task[1])


def embed_all(rows: list[dict[str, Any]], clip_dir: str | Path, known: dict[int, np.ndarray],
              batches_per_task: int = 16) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """embed_candidates over every row: in this process, or with PAS_RAY_ADDRESS set by one CLIP-holding Ray
    actor per GPU (or CPU slot), slices of rows at a time, joined in row order."""
    address = ray_address()
    if not address:
        return embed_candidates(rows, ClipEncoder(clip_dir, pick_device()), known)
    batch = ClipEncoder.DEFAULT_BATCH
    tasks = [([rows[i] for i in part], {i - part.start: known[i] for i in part if i in known})
             for part in fresh_slices(len(rows), set(known), batch * batches_per_task)]
    parts = list(map_on_ray(partial(_slice_worker, str(clip_dir)), tasks, address, "embed"))
    stats = [stat for _, part_stats in parts for stat in part_stats]
    matrices = [matrix for matrix, _ in parts if matrix.size]
    return (np.concatenate(matrices) if matrices else np.zeros((0, 0), np.float32)), stats
