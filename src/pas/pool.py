"""Index an unlabeled image pool: stream its images, embed them with CLIP, build a faiss index."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from PIL import Image

from pas.config import ConfigError, require

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class PoolIndexConfig:
    """params.pool_index: where the pool is, how images are screened and which index to build."""

    source: str = "data/pool"
    min_side: int = 8
    index: str = "auto"  # auto | flat | ivf | hnsw
    batch_size: int = 64

    def validate(self, prefix: str) -> None:
        """Check the index type and ranges."""
        require(self.index in INDEXES or self.index == "auto", f"{prefix}.index", self.index,
                f"use auto or one of {', '.join(INDEXES)}")
        require(self.min_side >= 1, f"{prefix}.min_side", self.min_side, "use a positive integer")


def check_source(source: str) -> Path:
    """Fail at once, naming the param, when the pool folder is missing or empty."""
    folder = Path(source)
    if not folder.is_dir():
        raise ConfigError(f"pool_index.source={source!r}: folder not found; point it at a folder of images "
                          "(the offline default is made by the sample_data stage)")
    return folder


def list_images(folder: Path) -> list[Path]:
    """Every image file under `folder`, recursively, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def open_checked(path: Path, min_side: int) -> tuple[Image.Image | None, str]:
    """Open an image as RGB, or return (None, reason) when it is unusable."""
    try:
        with Image.open(path) as image:
            image.load()
            if min(image.size) < min_side:
                return None, "too_small"
            return image.convert("RGB"), "ok" if image.mode == "RGB" else f"converted_{image.mode}"
    except Exception:  # PIL raises many types for corrupt or truncated files
        return None, "undecodable"


def scan_pool(folder: Path, min_side: int, rows: list[dict[str, Any]]) -> Iterator[Image.Image]:
    """Stream the usable images of the pool once, appending one status row per file to `rows`."""
    for path in list_images(folder):
        image, reason = open_checked(path, min_side)
        rows.append({"path": str(path.relative_to(folder)), "reason": reason, "usable": image is not None,
                     "width": image.width if image else 0, "height": image.height if image else 0})
        if image is not None:
            yield image


def _flat(dim: int, n: int) -> faiss.Index:
    return faiss.IndexFlatIP(dim)


def _ivf(dim: int, n: int) -> faiss.Index:
    nlist = max(1, min(65536, int(4 * np.sqrt(n))))
    return faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                         faiss.METRIC_INNER_PRODUCT)


def _hnsw(dim: int, n: int) -> faiss.Index:
    return faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)


INDEXES: dict[str, Callable[[int, int], faiss.Index]] = {"flat": _flat, "ivf": _ivf, "hnsw": _hnsw}


def build_index(embeddings: np.ndarray, kind: str = "auto", seed: int = 0) -> tuple[faiss.Index, str]:
    """Build an inner-product index over unit vectors; `auto` is exact below 200k vectors, IVF-SQ8 above."""
    n, dim = embeddings.shape
    if kind == "auto":
        kind = "flat" if n < 200_000 else "ivf"
    index = INDEXES[kind](dim, n)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = embeddings[rng.choice(n, size=min(n, 256 * index.nlist), replace=False)]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        index.nprobe = max(1, index.nlist // 16)
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    return index, kind


def recall_at_k(index: faiss.Index, embeddings: np.ndarray, k: int = 10, queries: int = 200, seed: int = 0) -> float:
    """Recall@k of `index` against exact search on a sample of the indexed vectors as queries."""
    n = len(embeddings)
    rng = np.random.default_rng(seed)
    q = np.ascontiguousarray(embeddings[rng.choice(n, size=min(n, queries), replace=False)], dtype=np.float32)
    exact = faiss.IndexFlatIP(embeddings.shape[1])
    exact.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    k = min(k, n)
    _, truth = exact.search(q, k)
    _, found = index.search(q, k)
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth, found))
    return hits / truth.size


def save_index(index: faiss.Index, path: Path) -> None:
    """Write a faiss index atomically."""
    from pas.shards import atomic_path

    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load_index(path: Path) -> faiss.Index:
    """Memory-map a saved faiss index for search."""
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
