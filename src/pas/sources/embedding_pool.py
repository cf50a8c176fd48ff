"""Pools given as precomputed CLIP embeddings + metadata: never re-embedded, read in streaming parts.

The layout of clip-retrieval's inference output and of the LAION / DataComp embedding releases:

    <pool>/img_emb/img_emb_0.npy        (N_0, D) float16/float32, row i = metadata row i
    <pool>/metadata/metadata_0.parquet  url, caption, optional key / uid / image_path
    <pool>/embedding_model.txt          the CLIP model that made them (or pool_index.embedding_model)

or one parquet file holding an `embedding` list column beside the metadata. The model must be the one
`models.clip` names: a pool embedded by another CLIP cannot answer its text queries. An item's id is its
`image_path` when the metadata has one (a local file or `shard.tar/member`, as for a local pool), else its key.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pas.core.config import ConfigError, DataError

log = logging.getLogger(__name__)

MODEL_FILE = "embedding_model.txt"
EMBEDDING_COLUMNS = ("embedding", "clip_embedding", "img_emb", "image_embedding")
ID_COLUMNS = ("image_path", "key", "uid", "url")
KEEP_COLUMNS = ("image_path", "key", "uid", "url", "caption", "TEXT", "URL")


@dataclass(frozen=True)
class Part:
    """One part: its metadata parquet and, for the folder layout, its embeddings .npy (None: a parquet column)."""

    metadata: Path
    embeddings: Path | None
    rows: int


@dataclass(frozen=True)
class EmbeddingPool:
    """The parts of a pool of precomputed embeddings, in order, and the model that made them."""

    root: Path
    parts: tuple[Part, ...]
    model: str
    dim: int

    @property
    def rows(self) -> int:
        """Items in the whole pool."""
        return sum(part.rows for part in self.parts)


def _number(path: Path) -> int:
    found = re.findall(r"\d+", path.stem)
    return int(found[-1]) if found else -1


def _embedding_column(schema: pa.Schema) -> str | None:
    return next((c for c in EMBEDDING_COLUMNS if c in schema.names), None)


def is_embedding_pool(source: Path) -> bool:
    """Whether `source` is an embeddings + metadata pool (the folder layout, or a parquet with an embedding column)."""
    if source.is_dir():
        return (source / "img_emb").is_dir() and (source / "metadata").is_dir()
    if source.suffix == ".parquet":
        try:
            return _embedding_column(pq.read_schema(source)) is not None
        except (pa.ArrowException, OSError):
            return False
    return False


def open_pool(source: Path, model_param: str = "") -> EmbeddingPool:
    """The pool's parts, checked: matching part counts and row counts, one embedding width, a named model."""
    model = model_param.strip()
    named = source / MODEL_FILE if source.is_dir() else source.with_name(MODEL_FILE)
    if not model and named.is_file():
        model = named.read_text().strip().splitlines()[0].strip()
    if not model:
        raise ConfigError(f"pool_index.source={str(source)!r} holds precomputed embeddings but names no model; "
                          f"write it into {named} or set pool_index.embedding_model (e.g. ViT-L-14/openai)")
    if source.is_dir():
        arrays = sorted((source / "img_emb").glob("*.npy"), key=_number)
        tables = sorted((source / "metadata").glob("*.parquet"), key=_number)
        if not arrays or len(arrays) != len(tables):
            raise DataError(f"{source}: {len(arrays)} embedding part(s) in img_emb/ but {len(tables)} metadata "
                            "part(s) in metadata/; each img_emb_N.npy needs its metadata_N.parquet")
        parts, dims = [], set()
        for array, table in zip(arrays, tables):
            shape = np.load(array, mmap_mode="r").shape
            rows = pq.read_metadata(table).num_rows
            if len(shape) != 2 or shape[0] != rows:
                raise DataError(f"{array.name} holds {shape} embeddings but {table.name} {rows} rows; "
                                "parts must match row for row")
            parts.append(Part(table, array, rows))
            dims.add(shape[1])
    else:
        schema = pq.read_schema(source)
        first = pq.ParquetFile(source).read_row_group(0, columns=[_embedding_column(schema)]).column(0)
        dims = {len(first[0].as_py())} if len(first) else {0}
        parts = [Part(source, None, pq.read_metadata(source).num_rows)]
    if len(dims) != 1:
        raise DataError(f"{source}: embedding parts of different widths {sorted(dims)}")
    return EmbeddingPool(source, tuple(parts), model, dims.pop())


def check_model(pool: EmbeddingPool, clip_name: str, clip_dim: int) -> None:
    """Refuse a pool embedded by another model than models.clip, in one line naming both."""
    if pool.model != clip_name:
        raise ConfigError(f"pool_index.source={str(pool.root)!r} was embedded with {pool.model!r} but models.clip is "
                          f"{clip_name!r}; a pool embedded by another CLIP cannot answer its text queries (set "
                          "models.clip to the pool's model, or embed the pool's images with this one)")
    if pool.dim != clip_dim:
        raise DataError(f"{pool.root}: embeddings are {pool.dim}-d but {clip_name} gives {clip_dim}-d vectors")


def iter_blocks(pool: EmbeddingPool, block: int = 32_768) -> Iterator[np.ndarray]:
    """Every embedding in order, as L2-normalised float32 blocks of at most `block` rows (memory-mapped parts)."""
    for part in pool.parts:
        if part.embeddings is not None:
            for rows in _read_npy_blocks(part.embeddings, block):
                yield _unit(rows.astype(np.float32))
        else:
            column = _embedding_column(pq.read_schema(part.metadata))
            for batch in pq.ParquetFile(part.metadata).iter_batches(batch_size=block, columns=[column]):
                values = batch.column(0).flatten().to_numpy(zero_copy_only=False)
                yield _unit(values.reshape(len(batch), -1).astype(np.float32))


def _npy_header(handle: BinaryIO, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the 2-D C-order .npy open in `handle`, which is left at its first row."""
    version = np.lib.format.read_magic(handle)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(handle)
    if fortran or len(shape) != 2:
        raise DataError(f"{path}: expected a C-order 2-D array of embeddings, found shape {shape}")
    return shape, dtype


def _read_npy_blocks(path: Path, block: int) -> Iterator[np.ndarray]:
    """(≤ block, D) row blocks of a 2-D .npy by plain reads: unlike a memory map, pages read once do not stay in the
    process's resident memory, so streaming a 10 GB part keeps RSS at one block."""
    with open(path, "rb") as handle:
        shape, dtype = _npy_header(handle, path)
        for start in range(0, shape[0], block):
            rows = min(block, shape[0] - start)
            yield np.fromfile(handle, dtype=dtype, count=rows * shape[1]).reshape(rows, shape[1])


def _unit(x: np.ndarray) -> np.ndarray:
    """x (a float32 array of its own) scaled in place to unit rows."""
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def iter_files(pool: EmbeddingPool, batch_size: int = 65_536) -> Iterator[pa.Table]:
    """The pool's item table in order, in batches: id (image_path, else key / uid / url, else part#row) and the
    metadata that identifies an image (url, caption, key, uid, image_path)."""
    offset = 0
    for index, part in enumerate(pool.parts):
        names = pq.read_schema(part.metadata).names
        keep = [c for c in KEEP_COLUMNS if c in names]
        id_column = next((c for c in ID_COLUMNS if c in names), None)
        reader = pq.ParquetFile(part.metadata)
        row = 0
        for batch in reader.iter_batches(batch_size=batch_size, columns=keep or None):
            table = pa.Table.from_batches([batch]).select(keep) if keep else pa.table({})
            ids = (table.column(id_column).cast(pa.string()) if id_column else
                   pa.array([f"{part.metadata.name}#{row + i}" for i in range(batch.num_rows)]))
            table = table.append_column("id", ids).append_column("pool_row", pa.array(
                np.arange(offset + row, offset + row + batch.num_rows, dtype=np.int64)))
            row += batch.num_rows
            yield table.append_column("part", pa.array([index] * batch.num_rows, pa.int32()))
        offset += part.rows


def rows_of(pool: EmbeddingPool, ids: list[int]) -> np.ndarray:
    """(len(ids), D) float32 unit vectors of pool rows `ids`, read part by part (.npy rows by positioned reads: a
    random row costs one small read, and no memory map keeps the pages of a 10 GB part resident)."""
    wanted = np.asarray(ids, dtype=np.int64)
    out = np.zeros((len(wanted), pool.dim), np.float32)
    offset = 0
    for part in pool.parts:
        inside = (wanted >= offset) & (wanted < offset + part.rows)
        if inside.any():
            local = wanted[inside] - offset
            if part.embeddings is not None:
                rows = _read_npy_rows(part.embeddings, local)
            else:  # an embedding column: the part's rows are read in order
                rows = np.concatenate(list(iter_blocks(EmbeddingPool(pool.root, (part,), pool.model, pool.dim))))[local]
            out[inside] = _unit(rows.astype(np.float32))
        offset += part.rows
    return out


def _read_npy_rows(path: Path, rows: np.ndarray) -> np.ndarray:
    """The given rows of a 2-D .npy, one positioned read each."""
    with open(path, "rb") as handle:
        shape, dtype = _npy_header(handle, path)
        start, width = handle.tell(), shape[1] * dtype.itemsize
        out = np.empty((len(rows), shape[1]), dtype)
        for i, row in enumerate(rows.tolist()):
            out[i] = np.frombuffer(os.pread(handle.fileno(), width, start + row * width), dtype)
    return out
