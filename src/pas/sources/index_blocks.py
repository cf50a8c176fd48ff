"""Build an IVF index block by block, resumably, and merge the blocks in memory or into on-disk lists.

Each block of at least `block_rows` vectors goes into its own small index file, kept, so a killed build resumes at
the first missing block. When the inverted lists fit the memory budget the blocks are read back one at a time and
merged into one in-memory index whose lists are sized exactly (peak: the index plus one block); when they do not, faiss merges them into a
`lists.ivfdata` file (OnDiskInvertedLists, faiss.contrib.ondisk) that searches memory-map.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

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


def block_rows(index: faiss.Index, budget_mb: int) -> int:
    """Vectors per block: a block's codes take at most an eighth of the budget (the merge holds one beside the
    index)."""
    return max(1, budget_mb * 2**20 // 8 // code_bytes(index))


def write_blocks(trained: faiss.Index, chunks: Callable[[], Iterator[np.ndarray]], folder: Path,
                 rows: int) -> list[str]:
    """Add the chunks into folder/block-<recipe digest>-NNNNNN.index files, a block closing once it holds `rows`
    vectors (ids count from 0 across blocks); a killed build keeps its finished blocks and skips their chunks
    without encoding them again; stale blocks are dropped. Returns the block files."""
    recipe = faiss.serialize_index(trained)
    digest = hashlib.sha256(recipe.tobytes()).hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    part: faiss.Index | None = None
    held, offset, reused = 0, 0, 0

    def close(path: Path) -> None:
        nonlocal part, held, reused
        if part is None:
            reused += 1
        else:
            with atomic_path(path) as tmp:
                faiss.write_index(part, str(tmp))
        files.append(str(path))
        part, held = None, 0

    for chunk in tqdm(chunks(), desc="index blocks", unit="chunk"):
        path = folder / f"block-{digest}-{len(files):06d}.index"
        if not path.exists():                      # chunk by chunk: a block's codes, never its float vectors
            part = part if part is not None else faiss.deserialize_index(recipe)
            part.add_with_ids(chunk, np.arange(offset, offset + len(chunk), dtype=np.int64))
        held, offset = held + len(chunk), offset + len(chunk)
        if held >= rows:
            close(path)
    if held:
        close(folder / f"block-{digest}-{len(files):06d}.index")
    for stale in folder.glob("block-*.index"):
        if str(stale) not in files:
            stale.unlink()
    log.info("index: %d block(s) of >= %d vectors (%d kept from a killed build), %d vectors", len(files), rows,
             reused, offset)
    return files


def merge_in_memory(index: faiss.Index, files: list[str]) -> None:
    """Fill the (empty, trained) IVF index's lists from the block files with every list sized exactly once: appending
    block after block would grow each list by doubling, up to twice the memory the codes need."""
    ivf = faiss.extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    sizes = np.zeros(ivf.nlist, np.int64)
    for path in files:
        loaded = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)  # (kept: block points into it)
        block = faiss.extract_index_ivf(loaded)
        sizes += [block.invlists.list_size(number) for number in range(ivf.nlist)]
        del block, loaded
    for number in np.flatnonzero(sizes).tolist():
        lists.resize(number, int(sizes[number]))
    filled = np.zeros(ivf.nlist, np.int64)
    for path in tqdm(files, desc="merge blocks", unit="block"):
        loaded = faiss.read_index(path)     # a plain read: one block resident at a time
        block = faiss.extract_index_ivf(loaded)
        for number in range(ivf.nlist):
            count = block.invlists.list_size(number)
            if count:
                lists.update_entries(number, int(filled[number]), count, block.invlists.get_ids(number),
                                     block.invlists.get_codes(number))
                filled[number] += count
        del block, loaded
    ivf.ntotal = index.ntotal = int(sizes.sum())


def build_in_blocks(trained: faiss.Index, chunks: Callable[[], Iterator[np.ndarray]], folder: Path, rows: int,
                    on_disk: bool) -> faiss.Index:
    """Add every chunk through resumable block files under folder/blocks, then merge them: into the trained index's
    own (in-memory) lists, or with `on_disk` into folder/lists.ivfdata, which the returned index then reads."""
    files = write_blocks(trained, chunks, folder / "blocks", rows)
    index = faiss.clone_index(trained)
    if on_disk:
        from faiss.contrib.ondisk import merge_ondisk

        lists = folder / "lists.ivfdata"
        lists.unlink(missing_ok=True)
        merge_ondisk(index, files, str(lists))
    else:
        merge_in_memory(index, files)
    return index
