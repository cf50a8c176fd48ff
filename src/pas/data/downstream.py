"""Labeled downstream datasets in three formats, one API: a folder per dataset with train and test splits.

    <root>/<name>/{train,test}.parquet     HF-style: image (bytes), label (int), label_name
    <root>/<name>/{train,test}/<class>/*   ImageFolder trees
    <root>/<name>/{train,test}.csv         path,label (paths relative to the CSV's folder)

`val` is accepted in place of `test`; a dataset with only a train split gets a deterministic,
stratified test split (`load_dataset(..., test_fraction=0.2, seed=0)`). Problems in the data (an
unreadable image, an empty class folder, a CSV row without a label or file) are logged, collected in
`Dataset.problems` / the `problems` list given to `iter_image_batches`, and the item is skipped: one bad
item never stops a long run. A structurally unusable split (no such column) raises before any work.
Rows are decoded in batches, so a split streams with flat memory; `load_split` collects a whole split.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from pas.core.shards import decode_image
from pas.data.types import COLUMNS, SPLITS, TEST_NAMES, Dataset, DownstreamDataError, SplitInfo

log = logging.getLogger(__name__)

def split_path(root: str | Path, dataset: str, split: str) -> Path:
    """Return `<root>/<dataset>/<split>.parquet` (split is train or test)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not allowed; use one of {', '.join(SPLITS)}")
    return Path(root) / dataset / f"{split}.parquet"


# --- parquet -------------------------------------------------------------------------------------------


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
    """Check a parquet split's file and columns and read its labels and class names (no images decoded)."""
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


def merge_class_names(dataset: str, train: SplitInfo, test: SplitInfo) -> list[str]:
    """One class list for a parquet dataset from both splits; a label named differently in each is an error."""
    present = [(info, set(np.unique(info.labels).tolist())) for info in (train, test)]
    names = []
    for label in range(max(len(train.class_names), len(test.class_names))):
        options = {info.class_names[label] for info, labels in present if label in labels}
        if len(options) > 1:
            raise DownstreamDataError(f"dataset {dataset!r}: label {label} has names {sorted(options)} in train and test")
        names.append(options.pop() if options else f"class_{label}")
    return names


def _iter_parquet(info: SplitInfo, rows_per_batch: int) -> Iterator[tuple[int, bytes | None]]:
    wanted = None if info.rows is None else {int(row): pos for pos, row in enumerate(info.rows)}
    offset = 0
    for batch in _open(info.path).iter_batches(batch_size=rows_per_batch, columns=["image"]):
        for i, data in enumerate(batch.column(0).to_pylist()):
            if wanted is None:
                yield offset + i, data
            elif offset + i in wanted:
                yield wanted[offset + i], data
        offset += batch.num_rows


def _load_parquet(folder: Path, name: str) -> tuple[dict[str, SplitInfo], list[str], list[str]]:
    splits = {split: read_split_info(folder / f"{split}.parquet") for split in ("train", *TEST_NAMES)
              if (folder / f"{split}.parquet").is_file()}
    names = merge_class_names(name, splits["train"], _test_split(splits) or splits["train"])
    return {k: dataclasses.replace(v, class_names=names) for k, v in splits.items()}, names, []


# --- the format registry ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Format:
    """How one on-disk layout is recognised, listed and read."""

    detect: Callable[[Path], bool]  # does this folder hold a dataset in this format?
    load: Callable[[Path, str], tuple[dict[str, SplitInfo], list[str], list[str]]]  # splits, class names, problems


def _formats() -> dict[str, Format]:
    from pas.data.formats import load_csv, load_imagefolder

    return {
        "parquet": Format(lambda d: (d / "train.parquet").is_file(), _load_parquet),
        "imagefolder": Format(lambda d: (d / "train").is_dir(), load_imagefolder),
        "csv": Format(lambda d: (d / "train.csv").is_file(), load_csv),
    }


def detect_format(folder: str | Path) -> str | None:
    """The first format whose layout `folder` follows, or None."""
    for name, fmt in _formats().items():
        if fmt.detect(Path(folder)):
            return name
    return None


def _test_split(splits: dict[str, SplitInfo]) -> SplitInfo | None:
    return next((splits[name] for name in TEST_NAMES if name in splits), None)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split of positions -> (train, test); each class keeps >= 1 train item."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = min(int(round(fraction * len(members))), len(members) - 1)
        test.append(members[:count])
        train.append(members[count:])
    return np.sort(np.concatenate(train or [np.zeros(0, np.int64)])), np.sort(np.concatenate(test or [np.zeros(0, np.int64)]))


def load_dataset(folder: str | Path, name: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """List a dataset folder in any format: class names, train and test splits, problems found."""
    folder = Path(folder)
    name = name or folder.name
    fmt = detect_format(folder)
    if fmt is None:
        raise DownstreamDataError(f"{folder} is not a downstream dataset: expected train.parquet, train.csv or a "
                                  "train/ ImageFolder tree (plus test or val)")
    splits, names, problems = _formats()[fmt].load(folder, name)
    test = _test_split(splits)
    if test is None:
        train_pos, test_pos = stratified_split(splits["train"].labels, test_fraction, seed)
        log.info("%s: no test or val split; holding out %d of %d train items (seed %d)", name, len(test_pos),
                 len(splits["train"].labels), seed)
        test, splits["train"] = splits["train"].subset(test_pos), splits["train"].subset(train_pos)
    problems = [*problems, *(p for s in splits.values() for p in s.problems)]
    for problem in problems:
        log.warning("%s: %s", name, problem)
    return Dataset(name, fmt, folder, names, {"train": splits["train"], "test": test}, tuple(problems))


def find_datasets(root: str | Path, names: tuple[str, ...] = (), test_fraction: float = 0.2,
                  seed: int = 0) -> dict[str, Dataset]:
    """Datasets under `root`: the folders named in `names` (or paths), or every dataset folder when empty."""
    root = Path(root)
    if names:
        folders = {}
        for entry in names:  # a folder under root, else a path of its own
            folder = root / entry if (root / entry).is_dir() else Path(entry)
            if not folder.is_dir():
                raise DownstreamDataError(f"downstream dataset {entry!r}: neither {root / entry} nor {entry} is a folder")
            folders[folder.name] = folder
    else:
        folders = {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and detect_format(d)} if root.is_dir() else {}
    if not folders:
        raise DownstreamDataError(f"{root} holds no downstream dataset (<name>/train.parquet, <name>/train.csv or "
                                  "<name>/train/<class>/...); run sample_data or add one")
    return {name: load_dataset(folder, name, test_fraction, seed) for name, folder in folders.items()}


# --- reading images -----------------------------------------------------------------------------------


def _iter_files(info: SplitInfo) -> Iterator[tuple[int, bytes | None]]:
    for position, path in enumerate(info.files):
        try:
            yield position, path.read_bytes()
        except OSError as err:
            log.debug("%s: %s", path, err)
            yield position, None


def _where(info: SplitInfo, position: int) -> str:
    if info.files:
        return str(info.files[position])
    row = position if info.rows is None else int(info.rows[position])
    return f"{info.path}: row {row}"


def iter_image_batches(info: SplitInfo | str | Path, rows_per_batch: int = 512, problems: list[str] | None = None
                       ) -> Iterator[tuple[np.ndarray, list[Image.Image]]]:
    """Yield (item positions, decoded RGB images) per batch, skipping undecodable items with a warning.

    `info` is a SplitInfo of any format or a parquet path. Each skipped item is appended to `problems`.
    """
    info = info if isinstance(info, SplitInfo) else read_split_info(info)
    items = _iter_parquet(info, rows_per_batch) if info.format == "parquet" else _iter_files(info)
    skipped: list[str] = []
    positions: list[int] = []
    images: list[Image.Image] = []
    for position, data in items:
        try:
            if data is None:
                raise ValueError("null or unreadable image")
            images.append(decode_image(data))
            positions.append(position)
        except Exception as err:  # noqa: BLE001 - any decoder failure means "skip this item"
            where = _where(info, position)
            log.warning("%s has an undecodable image (%s); skipping it", where, err)
            skipped.append(f"{where}: unreadable image ({err}); skipped")
        if len(images) == rows_per_batch:
            yield np.asarray(positions, dtype=np.int64), images
            positions, images = [], []
    if images:
        yield np.asarray(positions, dtype=np.int64), images
    if skipped:
        log.warning("%s: skipped %d undecodable image(s) of %d", info.path, len(skipped), len(info.labels))
        if problems is not None:
            problems.extend(skipped)


def load_split(path: str | Path | SplitInfo) -> tuple[list[Image.Image], np.ndarray, list[str]]:
    """Load a whole split: decodable images (RGB), their int64 labels, and class names by label."""
    info = path if isinstance(path, SplitInfo) else read_split_info(path)
    images: list[Image.Image] = []
    kept: list[np.ndarray] = []
    for positions, batch in iter_image_batches(info):
        images.extend(batch)
        kept.append(positions)
    positions = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    return images, info.labels[positions], info.class_names
