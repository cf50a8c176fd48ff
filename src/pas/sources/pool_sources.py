"""Stream the items of an unlabeled image pool: image files, WebDataset/img2dataset tar shards,
HF-style parquet files with image bytes, and file lists (`*.lst`), in any mixture under one root.

Nothing is held in memory beyond one item; every item gets a stable id and, when unusable, a
reason instead of stopping the run: undecodable, too_small, duplicate_path, missing_file, bad_file_name
(not UTF-8), outside_pool (a `.lst` entry outside the pool folder: not a DVC dep, so never read),
not_image_bytes (a parquet image column of another type), unreadable_container (a damaged parquet or list).
"""
from __future__ import annotations

import io
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
LIST_SUFFIXES = {".lst"}
PARQUET_IMAGE_COLUMNS = ("image", "jpg", "png", "img", "image_bytes", "bytes")


@dataclass(frozen=True)
class PoolItem:
    """One pool entry: a stable id, the kind of container, and its bytes (None when unreadable)."""

    id: str
    kind: str
    data: bytes | None
    reason: str = ""


def _item_id(path: Path, root: Path) -> str:
    """The id of a path: relative to the pool root when inside it; undecodable bytes escaped (\\xNN)."""
    text = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _file_items(path: Path, root: Path, seen: set[Path]) -> Iterator[PoolItem]:
    real = path.resolve()
    item_id = _item_id(path, root)
    if not _utf8(str(path)):
        yield PoolItem(item_id, "file", None, "bad_file_name")
        return
    if real in seen:
        yield PoolItem(item_id, "file", None, "duplicate_path")
        return
    seen.add(real)
    try:
        yield PoolItem(item_id, "file", path.read_bytes())
    except OSError:
        yield PoolItem(item_id, "file", None, "missing_file")


def _tar_items(path: Path, root: Path) -> Iterator[PoolItem]:
    prefix = _item_id(path, root)
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                    yield PoolItem(f"{prefix}/{member.name}", "tar", tar.extractfile(member).read())
    except (tarfile.TarError, OSError) as err:
        log.warning("tar shard %s is damaged (%s); its remaining members are skipped", path, err)


def _parquet_items(path: Path, root: Path) -> Iterator[PoolItem]:
    prefix = _item_id(path, root)
    row = 0
    try:
        names = pq.read_schema(path).names
        column = next((c for c in PARQUET_IMAGE_COLUMNS if c in names), None)
        if column is None:
            if path.with_suffix(".tar").is_file():   # img2dataset's metadata table beside its shard (url, caption, ...)
                log.debug("%s: metadata of the shard %s; its images are read from the shard", path, path.stem + ".tar")
            else:
                log.warning("%s has no image column (%s); skipped", path, ", ".join(PARQUET_IMAGE_COLUMNS))
            return
        for batch in pq.ParquetFile(path).iter_batches(columns=[column], batch_size=256):
            for value in batch.column(0).to_pylist():
                data = value.get("bytes") if isinstance(value, dict) else value  # HF `image` struct or raw bytes
                if not isinstance(data, (bytes, bytearray)):
                    yield PoolItem(f"{prefix}#{row}", "parquet", None, "not_image_bytes" if data else "undecodable")
                else:
                    yield PoolItem(f"{prefix}#{row}", "parquet", bytes(data), "" if data else "undecodable")
                row += 1
    except (pa.ArrowException, OSError) as err:
        log.warning("%s is not a readable parquet file (%s); its remaining rows are skipped", path, err)
        yield PoolItem(f"{prefix}#{row}", "parquet", None, "unreadable_container")


def _list_items(path: Path, root: Path, seen: set[Path]) -> Iterator[PoolItem]:
    inside = root.resolve()
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        yield PoolItem(_item_id(path, root), "list", None, "unreadable_container")
        return
    for number, raw in enumerate(lines, 1):
        try:
            entry = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            yield PoolItem(f"{_item_id(path, root)}:{number}", "list", None, "bad_file_name")
            continue
        if entry and not entry.startswith("#"):
            target = Path(entry) if Path(entry).is_absolute() else path.parent / entry
            if not target.resolve().is_relative_to(inside):
                yield PoolItem(entry, "file", None, "outside_pool")
                continue
            yield from _file_items(target, root, seen)


def iter_pool(source: Path) -> Iterator[PoolItem]:
    """Every item under `source` (a folder, or one tar / parquet / list file), in a stable order."""
    root = source if source.is_dir() else source.parent
    paths = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    seen: set[Path] = set()
    for path in paths:
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            yield from _file_items(path, root, seen)
        elif suffix == ".tar":
            yield from _tar_items(path, root)
        elif suffix == ".parquet":
            yield from _parquet_items(path, root)
        elif suffix in LIST_SUFFIXES:
            yield from _list_items(path, root, seen)


def decode_checked(data: bytes | None, min_side: int) -> tuple[Image.Image | None, str]:
    """Decode pool bytes to RGB, or return (None, reason): undecodable (corrupt, truncated) or too_small."""
    if not data:
        return None, "undecodable"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if min(image.size) < min_side:
                return None, "too_small"
            return image.convert("RGB"), "ok" if image.mode == "RGB" else f"converted_{image.mode}"
    except Exception:  # PIL raises many types for corrupt or truncated data
        return None, "undecodable"


def load_items(source: Path, ids: list[str]) -> dict[str, bytes]:
    """Fetch the bytes of chosen pool items by id, reading each tar / parquet container once."""
    root = source if source.is_dir() else source.parent
    wanted = set(ids)
    containers: dict[Path, set[str]] = {}
    found: dict[str, bytes] = {}
    for item_id in ids:
        if ".tar/" in item_id:
            containers.setdefault(root / (item_id.split(".tar/")[0] + ".tar"), set()).add(item_id)
        elif ".parquet#" in item_id:
            containers.setdefault(root / item_id.split("#")[0], set()).add(item_id)
        else:
            path = Path(item_id) if Path(item_id).is_absolute() else root / item_id
            found[item_id] = path.read_bytes()
    for container in containers:
        suffix = ".tar" if container.suffix == ".tar" else ".parquet"
        items = _tar_items(container, root) if suffix == ".tar" else _parquet_items(container, root)
        for item in items:
            if item.id in wanted and item.data:
                found[item.id] = item.data
    return found
