"""Decontamination: candidates too close to any image of a downstream evaluation set (train or test).

Three signals, any one is enough:
  embedding  CLIP cosine to an evaluation image >= eval_threshold (near-duplicates the model sees);
  hash       equal 8x8 average hash (resized / re-encoded copies, independent of the model);
  copy       normalised cross-correlation >= copy_threshold between the candidate's thumbnail and a crop
             grid of the evaluation image (lightly cropped copies; see pas.curation.fingerprints).
Evaluation images are streamed split by split; per split only embeddings and 64x64 grey levels are kept.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from pas.curation.embed import pixel_hash
from pas.curation.fingerprints import crop_fractions, grey, thumbnails
from pas.curation.neighbors import SearchConfig, similar_pairs
from pas.data.downstream import SplitInfo, find_datasets, iter_image_batches

log = logging.getLogger(__name__)

SIGNALS = ("hash", "copy", "embedding")  # the order in which a candidate's reason is recorded


class ImageEncoder(Protocol):
    """What decontamination needs from CLIP: unit image embeddings."""

    def encode_images(self, images: Iterable[Image.Image], total: int | None = None, desc: str = "embed") -> np.ndarray:
        """(N, D) unit vectors."""


@dataclass(frozen=True)
class Thresholds:
    """The decision thresholds (from params.dedup)."""

    embedding: float = 0.95
    copy: float = 0.97  # 0 disables the copy signal
    max_crop: float = 0.10
    crop_steps: int = 4


SAMPLE_KEPT = 2000   # evaluation embeddings kept per set for the diversity comparison


@dataclass
class Contamination:
    """Per candidate: which evaluation set it is too close to (or -1), by which signal, and how close."""

    sets: list[str]
    set_index: np.ndarray  # (N,) int64, -1 when clean
    item: np.ndarray  # (N,) int64 position of the matched image in its split, -1 when clean
    signal: list[str]  # (N,) '' | hash | copy | embedding
    nearest: np.ndarray  # (N,) float32 best CLIP cosine to any evaluation image (NaN if not computed)
    copy_score: np.ndarray  # (N,) float32 best thumbnail correlation seen (NaN if none computed)
    per_set: dict[str, int] = field(default_factory=dict)  # candidates too close to each set (may overlap)
    sizes: dict[str, int] = field(default_factory=dict)  # images per evaluation set
    samples: dict[str, np.ndarray] = field(default_factory=dict)  # a seeded sample of each set's CLIP embeddings

    @property
    def mask(self) -> np.ndarray:
        """Bool mask of contaminated candidates."""
        return self.set_index >= 0


def eval_splits(root: str | Path) -> list[tuple[str, SplitInfo]]:
    """Every split of every downstream dataset under `root` as ('<dataset>/<split>', info); [] if none."""
    if not Path(root).is_dir() or not any(Path(root).iterdir()):
        return []
    return [(f"{name}/{split}", info) for name, dataset in sorted(find_datasets(root).items())
            for split, info in dataset.splits.items()]


def decontaminate(embeddings: np.ndarray, hashes: list[str], thumbs: np.ndarray,
                  splits: list[tuple[str, SplitInfo]], encoder: ImageEncoder, limits: Thresholds,
                  search: SearchConfig = SearchConfig(), batch: int = 256) -> Contamination:
    """Match N candidates (embeddings, pixel hashes, (N, T*T) thumbnails) against every evaluation split."""
    n = len(embeddings)
    hits: dict[str, np.ndarray] = {s: np.full(n, -1, np.int64) for s in SIGNALS}  # first set index per signal
    items: dict[str, np.ndarray] = {s: np.full(n, -1, np.int64) for s in SIGNALS}  # the matched image in that set
    nearest = np.full(n, np.nan, np.float32)
    copy_score = np.full(n, np.nan, np.float32)
    per_set, sizes, samples = {}, {}, {}
    fractions = crop_fractions(limits.max_crop, limits.crop_steps)
    for index, (name, info) in enumerate(splits):
        found = np.zeros(n, bool)
        greys: list[np.ndarray] = []
        eval_hashes: dict[str, int] = {}
        positions: list[int] = []
        images = _stream(info, batch, greys, eval_hashes, positions)
        eval_embeddings = encoder.encode_images(images, total=len(info.labels), desc=name)
        keep = np.random.default_rng(index).permutation(len(eval_embeddings))[:SAMPLE_KEPT]
        samples[name] = eval_embeddings[np.sort(keep)]   # diversity is compared on the same space later
        sizes[name] = len(greys)
        eval_hashes.pop("", None)
        by_hash = np.flatnonzero([bool(h) and h in eval_hashes for h in hashes])
        matched = np.array([eval_hashes[hashes[i]] for i in by_hash], np.int64)
        _record(hits["hash"], items["hash"], found, by_hash, matched, index)
        where = np.asarray(positions, np.int64)
        if limits.copy > 0 and n:
            for start in range(0, len(greys), batch):
                crops = thumbnails(np.stack(greys[start : start + batch]).astype(np.float32), fractions)  # (B, K, T*T)
                pairs = similar_pairs(crops.reshape(-1, crops.shape[-1]), limits.copy, queries=thumbs, cfg=search)
                np.fmax(copy_score, pairs.best, out=copy_score)
                _record(hits["copy"], items["copy"], found, pairs.queries, where[start + pairs.base // crops.shape[1]],
                        index)
        if len(eval_embeddings):
            pairs = similar_pairs(eval_embeddings, limits.embedding, queries=embeddings, cfg=search)
            np.fmax(nearest, pairs.best, out=nearest)
            _record(hits["embedding"], items["embedding"], found, pairs.queries, where[pairs.base], index)
        per_set[name] = int(found.sum())
        log.info("%s: %d images; %d candidates too close", name, sizes[name], per_set[name])
    set_index, item = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    signal = [""] * n
    for kind in reversed(SIGNALS):  # the first signal in SIGNALS wins
        for i in np.flatnonzero(hits[kind] >= 0):
            set_index[i], item[i], signal[i] = hits[kind][i], items[kind][i], kind
    return Contamination([name for name, _ in splits], set_index, item, signal, nearest, copy_score, per_set, sizes,
                         samples)


def _stream(info: SplitInfo, batch: int, greys: list[np.ndarray], hashes: dict[str, int],
            positions: list[int]) -> Iterator[Image.Image]:
    """Yield a split's images in order while keeping their grey levels, first position per hash and positions."""
    for where, images in iter_image_batches(info, rows_per_batch=batch):
        for position, image in zip(where.tolist(), images):
            greys.append(grey(image).astype(np.uint8))
            hashes.setdefault(pixel_hash(image), position)
            positions.append(position)
            yield image


def _record(first: np.ndarray, first_item: np.ndarray, found: np.ndarray, rows: np.ndarray, matched: np.ndarray,
            index: int) -> None:
    """Mark candidate `rows` as matching image `matched` of set `index` (an earlier set already recorded stays)."""
    found[rows] = True
    fresh = first[rows] < 0
    first[rows[fresh]] = index
    first_item[rows[fresh]] = matched[fresh]
