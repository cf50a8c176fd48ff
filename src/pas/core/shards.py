"""The on-disk format: WebDataset tar shards (key.jpg + key.json) and parquet manifests.

webdataset (which imports torch) is imported by write_shard only; the atomic writers live in pas.core.atomic and
are re-exported here for the many callers that import them from this module."""
from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pas.core.atomic import atomic_dir, atomic_path, write_json

__all__ = ["atomic_dir", "atomic_path", "decode_image", "encode_jpeg", "load_embeddings", "read_shard",
           "read_table", "save_embeddings", "shard_name", "write_json", "write_shard", "write_table"]


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """Encode an image as RGB JPEG bytes."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes into an RGB PIL image (raises on corrupt data)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


def write_shard(path: str | Path, records: Iterable[tuple[str, bytes, dict[str, Any]]]) -> int:
    """Write (key, jpeg bytes, metadata) records into one tar shard atomically; return the count. Members carry
    mtime 0, so the same records always make the same bytes (whichever process or Ray actor writes them)."""
    import webdataset as wds   # imports torch: paid by the stages that write shards only

    count = 0
    with atomic_path(path) as tmp:
        with wds.TarWriter(str(tmp), mtime=0) as sink:
            for key, jpeg, meta in records:
                sink.write({"__key__": key, "jpg": jpeg, "json": json.dumps(meta, sort_keys=True).encode()})
                count += 1
    return count


def read_shard(path: str | Path) -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    """Yield (key, jpeg bytes, metadata) from one shard, in the order written."""
    pending: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            fields = pending.setdefault(key, {})
            fields[ext] = tar.extractfile(member).read()
            if "jpg" in fields and "json" in fields:
                del pending[key]
                yield key, fields["jpg"], json.loads(fields["json"])


def shard_name(prefix: str, index: int) -> str:
    """Return the canonical shard file name, e.g. generated-000003.tar."""
    return f"{prefix}-{index:06d}.tar"


def write_table(rows: list[dict[str, Any]] | pa.Table, path: str | Path, schema: pa.Schema | None = None) -> None:
    """Write rows (or a pyarrow table) to a parquet file atomically."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: str | Path) -> pa.Table:
    """Read a parquet manifest, naming the file and the producing stage when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found; run the stage that writes it (dvc repro)")
    return pq.read_table(path)


def save_embeddings(array: np.ndarray, path: str | Path) -> None:
    """Save L2-normalised embeddings as float16 .npy atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.asarray(array, dtype=np.float16))


def load_embeddings(path: str | Path) -> np.ndarray:
    """Load float16 embeddings as float32 rows."""
    return np.load(path).astype(np.float32)
