"""An IVF index whose inverted lists stay on disk, for pools whose codes exceed the memory budget.

The trained (empty) index is filled block by block: each block of vectors goes into its own small index file,
kept, so a killed build resumes at the first missing block; then faiss merges the blocks' inverted lists into one
`lists.ivfdata` file (OnDiskInvertedLists, faiss.contrib.ondisk) that searches memory-map. Only the coarse
quantizer and the list offsets are held in RAM.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import numpy as np

from pas.core.shards import atomic_path

log = logging.getLogger(__name__)

ID_BYTES = 8  # faiss stores an int64 id beside every code


def code_bytes(index: faiss.Index) -> int:
    """Bytes one vector takes in the index's inverted lists (its code + id); the flat size for other indexes."""
    ivf = faiss.try_extract_index_ivf(index)
    return (ivf.code_size if ivf is not None else index.d * 4) + ID_BYTES


def needs_disk(index: faiss.Index, n: int, budget_mb: int) -> bool:
    """Whether the inverted lists of `n` vectors exceed the memory budget (an IVF index only)."""
    return faiss.try_extract_index_ivf(index) is not None and n * code_bytes(index) > budget_mb * 2**20


def build_on_disk(trained: faiss.Index, chunks: Callable[[], Iterator[np.ndarray]], folder: Path) -> faiss.Index:
    """Add every chunk into per-block index files under folder/blocks (a killed build keeps the finished ones),
    merge their lists into folder/lists.ivfdata, and return the trained index now reading its lists from there."""
    from faiss.contrib.ondisk import merge_ondisk

    recipe = faiss.serialize_index(trained)
    digest = hashlib.sha256(recipe.tobytes()).hexdigest()[:12]
    blocks = folder / "blocks"
    blocks.mkdir(parents=True, exist_ok=True)
    files, offset, reused = [], 0, 0
    for number, block in enumerate(chunks()):
        path = blocks / f"block-{digest}-{number:06d}.index"
        if path.exists():
            reused += 1
        else:
            part = faiss.deserialize_index(recipe)
            part.add_with_ids(block, np.arange(offset, offset + len(block), dtype=np.int64))
            with atomic_path(path) as tmp:
                faiss.write_index(part, str(tmp))
        files.append(str(path))
        offset += len(block)
    for stale in blocks.glob("block-*.index"):
        if str(stale) not in files:
            stale.unlink()
    log.info("on-disk index: %d block(s) (%d kept from a killed build), %d vectors -> %s", len(files), reused,
             offset, folder / "lists.ivfdata")
    index = faiss.deserialize_index(recipe)
    lists = folder / "lists.ivfdata"
    lists.unlink(missing_ok=True)
    merge_ondisk(index, files, str(lists))
    return index
