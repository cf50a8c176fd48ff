"""Labeled downstream datasets: `<root>/<dataset>/{train,test}.parquet` with image/label/label_name.

Rows are read in record batches, so a split streams with flat memory (`iter_image_batches`);
`load_split` collects a whole split for small datasets and tests. An undecodable image is skipped,
logged with its row number and counted, so one bad row never stops a long run.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from pas.config import DataError
from pas.shards import decode_image

log = logging.getLogger(__name__)

COLUMNS = ("image", "label", "label_name")
SPLITS = ("train", "test")


class DownstreamDataError(DataError, ValueError):
    """A downstream parquet file does not follow the image/label/label_name format."""


@dataclass(frozen=True)
class SplitInfo:
    """What a split holds before any image is decoded: one label per row and the class names."""

    path: Path
    labels: np.ndarray  # (N,) int64, every row, skipped or not
    class_names: list[str]  # index = label


def split_path(root: str | Path, dataset: str, split: str) -> Path:
    """Return `<root>/<dataset>/<split>.parquet` (split is train or test)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not allowed; use one of {', '.join(SPLITS)}")
    return Path(root) / dataset / f"{split}.parquet"


def _open(path: Path) -> pq.ParquetFile:
    if not path.is_file():
        raise FileNotFoundError(
            f"downstream split {path} not found; expected <root>/<dataset>/train.parquet and test.parquet"
        )
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DownstreamDataError(f"{path} is not a readable parquet file: {err}") from err
    present = parquet.schema_arrow.names
    for column in COLUMNS:
        if column not in present:
            raise DownstreamDataError(
                f"{path} has no column {column!r}; found {', '.join(present) or 'no columns'}, "
                f"need {', '.join(COLUMNS)}"
            )
    return parquet


def read_split_info(path: str | Path) -> SplitInfo:
    """Check a split's file and columns and read its labels and class names (no images decoded)."""
    path = Path(path)
    table = _open(path).read(columns=["label", "label_name"])
    if not pa.types.is_integer(table.schema.field("label").type):
        raise DownstreamDataError(f"{path}: column 'label' must hold integers, not {table.schema.field('label').type}")
    if table.num_rows and table.column("label").null_count:
        raise DownstreamDataError(f"{path}: column 'label' has {table.column('label').null_count} null value(s)")
    labels = table.column("label").to_numpy().astype(np.int64)
    if labels.size and labels.min() < 0:
        row = int(np.argmin(labels))
        raise DownstreamDataError(f"{path}: row {row} has label {labels[row]}; labels must be 0..C-1")
    names = pc.cast(table.column("label_name"), pa.string()).to_pylist()
    return SplitInfo(path=path, labels=labels, class_names=_class_names(path, labels, names))


def _class_names(path: Path, labels: np.ndarray, names: list[str | None]) -> list[str]:
    """label_name ordered by label; one name per label, a placeholder for labels absent here."""
    by_label: dict[int, str] = {}
    for row, (label, name) in enumerate(zip(labels.tolist(), names)):
        name = name if name is not None else f"class_{label}"
        known = by_label.setdefault(label, name)
        if known != name:
            raise DownstreamDataError(f"{path}: row {row} names label {label} {name!r}, earlier rows {known!r}")
    count = max(by_label) + 1 if by_label else 0
    missing = [label for label in range(count) if label not in by_label]
    if missing:
        log.warning("%s: no rows for label(s) %s of 0..%d", path, missing[:10], count - 1)
    return [by_label.get(label, f"class_{label}") for label in range(count)]


def iter_image_batches(path: str | Path, rows_per_batch: int = 512) -> Iterator[tuple[np.ndarray, list[Image.Image]]]:
    """Yield (row indices, decoded RGB images) per record batch, skipping undecodable rows with a warning."""
    path = Path(path)
    parquet = _open(path)
    offset, skipped = 0, []
    for batch in parquet.iter_batches(batch_size=rows_per_batch, columns=["image"]):
        rows, images = [], []
        for i, data in enumerate(batch.column(0).to_pylist()):
            row = offset + i
            try:
                if data is None:
                    raise ValueError("null image")
                images.append(decode_image(data))
                rows.append(row)
            except Exception as err:  # noqa: BLE001 - any decoder failure means "skip this row"
                log.warning("%s: row %d has an undecodable image (%s); skipping it", path, row, err)
                skipped.append(row)
        offset += batch.num_rows
        yield np.asarray(rows, dtype=np.int64), images
    if skipped:
        log.warning("%s: skipped %d undecodable image(s) of %d (rows %s%s)", path, len(skipped), offset,
                    ", ".join(map(str, skipped[:20])), " ..." if len(skipped) > 20 else "")


def load_split(path: str | Path) -> tuple[list[Image.Image], np.ndarray, list[str]]:
    """Load a whole split: decodable images (RGB), their int64 labels, and class names by label."""
    info = read_split_info(path)
    images: list[Image.Image] = []
    kept: list[np.ndarray] = []
    for rows, batch in iter_image_batches(info.path):
        images.extend(batch)
        kept.append(rows)
    rows = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    return images, info.labels[rows], info.class_names
