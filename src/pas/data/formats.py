"""Listing file-based downstream datasets: ImageFolder trees and path,label CSV files.

Both return (splits, class names, problems) for pas.data.downstream.load_dataset. Class names are the sorted
union over the splits (numerically sorted when every label is an integer), so a label index means the
same class in train and test. Problems are reported, and the item is left out; nothing raises for them.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from pas.data.types import TEST_NAMES, DownstreamDataError, SplitInfo

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
CSV_COLUMNS = ("path", "label")


def _sorted_names(names: set[str]) -> list[str]:
    """Integers in numeric order when every name is one, else alphabetical."""
    if names and all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _present_splits(folder: Path, suffix: str) -> list[str]:
    return [split for split in ("train", *TEST_NAMES) if (folder / f"{split}{suffix}").exists()][:2]


def _list_class_folder(split_dir: Path, problems: list[str]) -> dict[str, list[Path]]:
    classes: dict[str, list[Path]] = {}
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        others = sum(1 for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES)
        if not files:
            problems.append(f"{split_dir.name}/{class_dir.name}: empty class folder (no image files); "
                            "the class has no items in this split")
        if others:
            log.info("%s: ignored %d non-image file(s)", class_dir, others)
        classes[class_dir.name] = files
    loose = [p.name for p in split_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        problems.append(f"{split_dir.name}: {len(loose)} image(s) outside any class folder (e.g. {loose[0]}); ignored")
    return classes


def load_imagefolder(folder: Path, name: str) -> tuple[dict[str, SplitInfo], list[str], list[str]]:
    """`<folder>/<split>/<class>/<image>` for train and test (or val)."""
    problems: list[str] = []
    listed = {split: _list_class_folder(folder / split, problems) for split in _present_splits(folder, "")}
    if not listed["train"]:
        raise DownstreamDataError(f"{folder / 'train'} holds no class folders; expected train/<class>/<image files>")
    names = _sorted_names({c for classes in listed.values() for c in classes})
    index = {c: i for i, c in enumerate(names)}
    splits = {}
    for split, classes in listed.items():
        files = [(path, index[c]) for c in sorted(classes) for path in classes[c]]
        splits[split] = SplitInfo(path=folder / split, labels=np.asarray([lab for _, lab in files], dtype=np.int64),
                                  class_names=names, format="imagefolder", files=tuple(p for p, _ in files))
    return splits, names, problems


def _read_csv(path: Path, problems: list[str]) -> list[tuple[Path, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        if any(c not in columns for c in CSV_COLUMNS):
            raise DownstreamDataError(f"{path} has columns {', '.join(columns) or 'none'}; need a header with "
                                      f"{', '.join(CSV_COLUMNS)}")
        items = []
        for line, row in enumerate(reader, start=2):  # line 1 is the header
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            if not row.get("path"):
                problems.append(f"{path.name} line {line}: path missing; row skipped")
                continue
            if not row.get("label"):
                problems.append(f"{path.name} line {line}: label missing for {row['path']}; row skipped")
                continue
            image = Path(row["path"]) if Path(row["path"]).is_absolute() else path.parent / row["path"]
            if not image.is_file():
                problems.append(f"{path.name} line {line}: file {row['path']} not found; row skipped")
                continue
            items.append((image, row["label"]))
    return items


def load_csv(folder: Path, name: str) -> tuple[dict[str, SplitInfo], list[str], list[str]]:
    """`<folder>/{train,test}.csv` with a path,label header; paths relative to the CSV's folder."""
    problems: list[str] = []
    listed = {split: _read_csv(folder / f"{split}.csv", problems) for split in _present_splits(folder, ".csv")}
    train_labels = {label for _, label in listed["train"]}
    for split, items in listed.items():
        unseen = sorted({label for _, label in items} - train_labels)
        if unseen:
            problems.append(f"{split}.csv: label(s) {', '.join(unseen[:10])} do not occur in train.csv; "
                            "those classes cannot be learned")
    names = _sorted_names({label for items in listed.values() for _, label in items})
    index = {c: i for i, c in enumerate(names)}
    splits = {split: SplitInfo(path=folder / f"{split}.csv", class_names=names, format="csv",
                               labels=np.asarray([index[label] for _, label in items], dtype=np.int64),
                               files=tuple(p for p, _ in items))
              for split, items in listed.items()}
    return splits, names, problems
