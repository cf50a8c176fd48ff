"""What pretrain trains on: the curated manifest, or any image dataset a user names (`pretrain.dataset`).

    manifest, record = resolve_dataset("data/pas-f/*.parquet", Path("data/curated/manifest.parquet"))

A dataset becomes a manifest of (key, shard) rows that the view stream reads shard by shard:
- `curated`: the dedup stage's manifest (WebDataset shards of the pipeline);
- HF-style parquet (the PaS release format: an `image` column of {bytes, path} or raw bytes, as in
  pas-f / pas-b / pas-i): a shard is a parquet file, a key `<file index>-<row>`;
- WebDataset `.tar` shards: a shard is a tar, a key the sample's key (its first .jpg/.jpeg/.png/.webp member;
  keys split as WebDataset splits them and unique across shards);
- an ImageFolder (`root/<class>/<image>`, class folders optional): a shard is a folder, a key the image's
  path below the root.
A path may be a file, a folder or a glob (`data/pas-f/*.parquet`). The record ({name, path, md5, images,
format}) names what was used in the model card and MLflow; its md5 covers the keys and file sizes.
"""
from __future__ import annotations

import glob
import hashlib
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from webdataset.tariterators import base_plus_ext

from pas.core.config import ConfigError
from pas.core.shards import read_table

CURATED = "curated"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TAR_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def _files(spec: str) -> list[Path]:
    """The files or folders a path or glob names, sorted; a ConfigError when it names nothing."""
    matches = sorted(Path(p) for p in glob.glob(spec, recursive=True)) if glob.has_magic(spec) else [Path(spec)]
    matches = [p for p in matches if p.exists()]
    if not matches:
        raise ConfigError(f"pretrain.dataset={spec!r} names no file or folder; use 'curated', a parquet file, "
                          f"WebDataset .tar shards, an ImageFolder, or a glob of them (data/pas-f/*.parquet)")
    return matches


def _kind(paths: list[Path], spec: str) -> tuple[str, list[Path]]:
    """(parquet | webdataset | imagefolder, the files or root folder) of the matched paths."""
    if len(paths) == 1 and paths[0].is_dir():
        root = paths[0]
        for kind, pattern in (("parquet", "*.parquet"), ("webdataset", "*.tar")):
            found = sorted(root.rglob(pattern))
            if held_out := [f for f in found if _held_out_split(f.relative_to(root))]:
                raise ConfigError(f"pretrain.dataset={spec!r} holds evaluation splits too (e.g. {held_out[0]}); "
                                  f"name the training files with a glob, e.g. {root}/**/train-*{pattern[1:]}")
            if found:
                return kind, found
        return "imagefolder", [root]
    suffixes = {p.suffix for p in paths}
    if suffixes == {".parquet"}:
        return "parquet", paths
    if suffixes == {".tar"}:
        return "webdataset", paths
    raise ConfigError(f"pretrain.dataset={spec!r} matches {', '.join(sorted(suffixes))} files; use parquet "
                      f"files, WebDataset .tar shards or one ImageFolder folder")


HELD_OUT = ("test", "validation", "valid", "val", "eval")


def _held_out_split(relative: Path) -> bool:
    """Whether a file of a dataset folder belongs to a test / validation split (HF: data/test-00000-of-00001.parquet,
    or a test/ folder): pretraining on a whole folder must not take those in."""
    names = [part.lower() for part in relative.parts[:-1]] + [relative.name.lower().split("-")[0].split(".")[0]]
    return any(name in HELD_OUT for name in names)


def _parquet_image_column(schema: pa.Schema, path: Path) -> str:
    """The image column of an HF-style parquet: `image` ({bytes, path} or binary), else the only binary one."""
    candidates = [f.name for f in schema if f.name == "image"] or [
        f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
        or (pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0)]
    if len(candidates) != 1:
        raise ConfigError(f"{path} has no single image column (columns: {', '.join(schema.names)}); an HF image "
                          f"dataset stores images in `image` as {{bytes, path}}")
    return candidates[0]


def _parquet_manifest(files: list[Path]) -> pa.Table:
    keys, shards = [], []
    for index, path in enumerate(files):
        meta = pq.ParquetFile(path)
        _parquet_image_column(meta.schema_arrow, path)
        keys += [f"{index:05d}-{row:09d}" for row in range(meta.metadata.num_rows)]
        shards += [str(path.absolute())] * meta.metadata.num_rows
    return pa.table({"key": keys, "shard": shards})


def tar_image_key(member: tarfile.TarInfo) -> str | None:
    """The sample key of an image member of a tar shard (None for any other member), split as WebDataset splits
    names: at the first dot of the file name; an image is a member whose last extension is an image's."""
    key, ext = base_plus_ext(member.name)
    if not (member.isfile() and key and ext.rpartition(".")[2].lower() in TAR_IMAGE_EXTS):
        return None
    return key


def _tar_manifest(files: list[Path], spec: str) -> pa.Table:
    keys, shards, first_shard = [], [], {}
    for path in files:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                key = tar_image_key(member)
                if key is None:
                    continue
                if key in first_shard:
                    if first_shard[key] == path:
                        continue                             # a second image of the same sample: the first is read
                    raise ConfigError(f"pretrain.dataset={spec!r}: sample key {key!r} is in both "
                                      f"{first_shard[key].name} and {path.name}; WebDataset keys must be unique "
                                      "across shards (prefix each shard's keys with its name when writing them)")
                first_shard[key] = path
                keys.append(key)
                shards.append(str(path.absolute()))
    return pa.table({"key": keys, "shard": shards})


def _folder_manifest(root: Path) -> pa.Table:
    images = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    keys = [p.relative_to(root).as_posix() for p in images]      # class/name: unique across class folders
    shards = [str(p.parent.absolute()) for p in images]             # a class folder is a shard
    return pa.table({"key": keys, "shard": shards})


def _digest(manifest: pa.Table) -> str:
    """md5 over the sorted (shard file name, key) pairs and each shard file's size."""
    digest = hashlib.md5()
    shards = manifest.column("shard").to_pylist()
    for shard, key in sorted(zip(shards, manifest.column("key").to_pylist())):
        digest.update(f"{Path(shard).name}/{key}\n".encode())
    for shard in sorted(set(shards)):
        path = Path(shard)
        digest.update(f"{path.name}:{path.stat().st_size if path.is_file() else 0}\n".encode())
    return digest.hexdigest()


def resolve_dataset(spec: str, curated: Path) -> tuple[pa.Table, dict[str, object]]:
    """(manifest of key + shard rows, record {name, path, md5, format, images}) of pretrain.dataset."""
    from pas.core.hashing import file_digest

    if spec == CURATED:
        manifest = read_table(curated)
        return manifest, {"name": CURATED, "path": str(curated), "md5": file_digest(curated, "md5"),
                          "format": "pas curated manifest", "images": manifest.num_rows}
    kind, files = _kind(_files(spec), spec)
    if kind == "parquet":
        manifest = _parquet_manifest(files)
    elif kind == "webdataset":
        manifest = _tar_manifest(files, spec)
    else:
        manifest = _folder_manifest(files[0])
    if manifest.num_rows == 0:
        raise ConfigError(f"pretrain.dataset={spec!r} holds no images ({kind}: {len(files)} file(s) read)")
    name = Path(spec.split("*")[0].rstrip("/")).name or Path(spec).parent.name
    return manifest, {"name": name or kind, "path": spec, "md5": _digest(manifest), "format": kind,
                      "images": manifest.num_rows}


def read_parquet_rows(path: Path, keys: frozenset[str]) -> Iterator[tuple[str, bytes]]:
    """Yield (key, encoded image bytes) of the listed `<file>-<row>` keys, in row order, batch by batch."""
    file = pq.ParquetFile(path)
    column = _parquet_image_column(file.schema_arrow, path)
    prefix = next(iter(keys)).split("-")[0] if keys else ""
    row = 0
    for batch in file.iter_batches(batch_size=256, columns=[column]):
        values = batch.column(0)
        if pa.types.is_struct(values.type):
            values = values.field("bytes")
        for value in values.to_pylist():
            key = f"{prefix}-{row:09d}"
            row += 1
            if key in keys:
                if value is None:
                    raise ValueError(f"{path} row {row - 1} has no image bytes")
                yield key, value


def read_folder_images(folder: Path, keys: frozenset[str]) -> Iterator[tuple[str, bytes]]:
    """Yield (key, file bytes) of the listed images of one folder (keys are paths below the root), in name order."""
    for key in sorted(keys):
        yield key, (folder / Path(key).name).read_bytes()
