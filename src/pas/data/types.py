"""Shared types of the downstream datasets: a split, a dataset, their error, the column and split names."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pas.core.config import DataError

COLUMNS = ("image", "label", "label_name")
SPLITS = ("train", "test")
TEST_NAMES = ("test", "val")  # the evaluation split's name, in order of preference


class DownstreamDataError(DataError, ValueError):
    """A downstream dataset does not follow its format (missing file or column, inconsistent labels)."""


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """What a split holds before any image is decoded: one label per item and the class names."""

    path: Path  # the parquet/CSV file or the ImageFolder split folder
    labels: np.ndarray  # (N,) int64, one per item
    class_names: list[str]  # index = label
    format: str = "parquet"
    files: tuple[Path, ...] = ()  # file formats: the image file of each item
    rows: np.ndarray | None = None  # parquet: the file row of each item (None = every row, in order)
    problems: tuple[str, ...] = ()  # found while listing the split (empty class folder, row without a label)

    def subset(self, positions: np.ndarray) -> SplitInfo:
        """The split restricted to `positions` (indices into its items), in that order."""
        positions = np.asarray(positions, dtype=np.int64)
        rows = (self.rows if self.rows is not None else np.arange(len(self.labels)))[positions] \
            if self.format == "parquet" else None
        files = tuple(self.files[i] for i in positions) if self.files else ()
        return dataclasses.replace(self, labels=self.labels[positions], files=files, rows=rows)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A downstream dataset: its format, class names and train/test splits sharing them."""

    name: str
    format: str
    root: Path
    class_names: list[str]
    splits: dict[str, SplitInfo]
    problems: tuple[str, ...] = ()
