"""`pas pool embed`: embed a team's pool once, into the layout clip-retrieval writes and pool_index reads.

    pas pool embed FOLDER|URL-LIST OUT [--clip models/clip] [--part-size N]

    OUT/img_emb/img_emb_N.npy           (n, D) float16, L2-normalised; row i = metadata row i
    OUT/metadata/metadata_N.parquet     url, caption, key (+ image_path for a local file or shard member)
    OUT/embedding_model.txt             the CLIP that made them (its models/lock name), checked by pool_index

FOLDER is a folder of images / tar shards / parquet / .lst lists (read by pas.sources.pool_sources), or an
img2dataset output folder (each shard-N.tar beside its shard-N.parquet: url, caption, key, status). A URL-LIST
(a .txt with one URL a line, or a .parquet / .csv with a `url` and optional `caption` column) is downloaded first
with img2dataset into OUT/download (incremental: a rerun fetches only what is missing), then embedded as such a folder.
A part is one img2dataset shard, or `--part-size` items of a plain folder. Each part is written atomically (its
embeddings, then its metadata, which carries the part's fingerprint and marks it finished); a rerun keeps the
finished parts whose fingerprint still matches and embeds the rest. With PAS_RAY_ADDRESS set, the parts to embed are
Ray tasks (pas.core.scaleout.map_on_ray: one encoder per actor, one task per part). Point pool_index.source at OUT.
"""
from __future__ import annotations

import hashlib
import logging
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pas.core.config import PasError
from pas.sources.embedding_pool import MODEL_FILE
from pas.sources.pool_sources import IMAGE_SUFFIXES, PoolItem, decode_checked, iter_pool

log = logging.getLogger(__name__)

URL_LIST_SUFFIXES = {".txt", ".parquet", ".csv"}
FINGERPRINT = b"pas.fingerprint"
PART_SIZE = 100_000
SCHEMA = pa.schema([("url", pa.string()), ("caption", pa.string()), ("key", pa.string()),
                    ("image_path", pa.string())])


@dataclass(frozen=True)
class Entry:
    """One pool item to embed: its bytes (None: unreadable, with a reason) and its metadata row."""

    data: bytes | None
    reason: str
    row: dict[str, str]


@dataclass(frozen=True)
class PartTask:
    """One part: its number, fingerprint and entries (a Ray task travels as this, by pickle)."""

    index: int
    digest: str
    entries: list[Entry]


def part_paths(out: Path, index: int) -> tuple[Path, Path]:
    """(embeddings .npy, metadata .parquet) of part `index`, named as clip-retrieval names them."""
    return out / "img_emb" / f"img_emb_{index}.npy", out / "metadata" / f"metadata_{index}.parquet"


def is_img2dataset(folder: Path) -> bool:
    """Whether `folder` is img2dataset output: tar shards, each beside a parquet with url and status columns."""
    shards = sorted(folder.glob("*.tar"))
    if not shards:
        return False
    for shard in shards:
        table = shard.with_suffix(".parquet")
        if not table.is_file() or not {"url", "status", "key"} <= set(pq.read_schema(table).names):
            return False
    return True


def _local_entry(item: PoolItem, root: Path) -> Entry:
    path = str(root.absolute() / item.id)   # absolute: pool_index / retrieve load it wherever OUT lives
    return Entry(item.data, item.reason, {"url": "", "caption": "", "key": item.id, "image_path": path})


def _local_parts(source: Path, size: int) -> Iterator[list[Entry]]:
    root = source if source.is_dir() else source.parent
    stream = (_local_entry(item, root) for item in iter_pool(source))
    while part := list(islice(stream, size)):
        yield part


def _img2dataset_part(shard: Path) -> list[Entry]:
    """The successful samples of one img2dataset shard with their url / caption / key, in the parquet's order."""
    columns = [c for c in ("key", "url", "caption", "status") if c in pq.read_schema(shard.with_suffix(".parquet")).names]
    rows = pq.read_table(shard.with_suffix(".parquet"), columns=columns).to_pylist()
    images: dict[str, bytes] = {}
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                name = Path(member.name)
                if member.isfile() and name.suffix.lower() in IMAGE_SUFFIXES:
                    images[name.stem] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as err:
        log.warning("tar shard %s is damaged (%s); its remaining members are skipped", shard, err)
    entries = []
    for row in rows:
        if row.get("status") != "success":
            continue
        data = images.get(row["key"])
        entries.append(Entry(data, "" if data else "missing_file",
                             {"url": row.get("url") or "", "caption": row.get("caption") or "", "key": row["key"]}))
    return entries


def _digest(model_sha: str, min_side: int, entries: list[Entry]) -> str:
    """A part's fingerprint: what embeds it and every entry's metadata and bytes."""
    digest = hashlib.sha256(f"{model_sha}:{min_side}\n".encode())
    for entry in entries:
        content = hashlib.sha256(entry.data).hexdigest() if entry.data else "-"
        digest.update(f"{sorted(entry.row.items())}:{content}:{entry.reason}\n".encode())
    return digest.hexdigest()[:16]


def _finished(out: Path, index: int, digest: str) -> bool:
    emb, meta = part_paths(out, index)
    if not (emb.is_file() and meta.is_file()):
        return False
    return (pq.read_schema(meta).metadata or {}).get(FINGERPRINT, b"").decode() == digest


def _embed_part(encoder: Any, min_side: int, out: Path, local: bool, task: PartTask) -> tuple[int, int]:
    """Embed one part and write its two files atomically (metadata last); returns (index, rows written)."""
    import numpy as np

    from pas.core.shards import save_embeddings, write_table

    images, rows = [], []
    for entry in task.entries:
        image, _ = (None, entry.reason) if entry.reason else decode_checked(entry.data, min_side)
        if image is not None:
            images.append(image)
            rows.append(entry.row)
    vectors = (encoder.encode_images(images, total=len(images), desc=f"part {task.index}") if images
               else np.zeros((0, encoder.encode_texts(["a photo"]).shape[1]), np.float32))
    emb_path, meta_path = part_paths(out, task.index)
    save_embeddings(vectors, emb_path)
    schema = SCHEMA if local else SCHEMA.remove(SCHEMA.get_field_index("image_path"))
    table = pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata({FINGERPRINT: task.digest})
    write_table(table, meta_path)
    return task.index, len(rows)


def _part_worker(clip: str, batch_size: int, min_side: int, out: Path, local: bool) -> Callable[[PartTask], Any]:
    """The encoder, loaded once, as a function of one part (in this process or in a Ray actor)."""
    from pas.core.runtime import pick_device
    from pas.models.clip import ClipEncoder

    encoder = ClipEncoder(clip, pick_device(), batch_size)
    return partial(_embed_part, encoder, min_side, out, local)


def _read_url_list(path: Path) -> pa.Table:
    if path.suffix == ".txt":
        urls = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        return pa.table({"url": urls, "caption": [""] * len(urls)})
    if path.suffix == ".csv":
        from pyarrow import csv

        table = csv.read_csv(path)
    else:
        table = pq.read_table(path)
    if "url" not in table.column_names:
        raise PasError(f"{path} has no `url` column; give a .txt with one URL a line, or a table with url[, caption]")
    caption = table.column("caption") if "caption" in table.column_names else pa.array([""] * table.num_rows)
    return pa.table({"url": table.column("url").cast(pa.string()), "caption": caption.cast(pa.string())})


def download_url_list(path: Path, folder: Path, min_side: int, threads: int = 16, shard_size: int = 10_000) -> Path:
    """Download a URL list with img2dataset into `folder` (webdataset shards; incremental on a rerun)."""
    import os

    from pas.core.shards import atomic_path

    table = _read_url_list(path)
    if table.num_rows == 0:
        raise PasError(f"{path} lists no URL; give one URL a line (or a url column)")
    folder.mkdir(parents=True, exist_ok=True)
    listing = folder.parent / "urls.parquet"
    with atomic_path(listing) as tmp:
        pq.write_table(table, tmp)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network call on import
    from img2dataset import download as img2dataset_download

    img2dataset_download(
        url_list=str(listing), input_format="parquet", url_col="url", caption_col="caption",
        output_folder=str(folder), output_format="webdataset", processes_count=1, thread_count=threads,
        resize_mode="no", min_image_size=min_side, number_sample_per_shard=shard_size, enable_wandb=False,
        distributor="multiprocessing", incremental_mode="incremental", retries=0)
    return folder


def _inline(make_worker: Callable[[], Callable[[PartTask], Any]], tasks: Iterator[PartTask]) -> Iterator[Any]:
    """worker(task) for each task in this process; the encoder is loaded only when a part needs embedding."""
    worker = None
    for task in tasks:
        worker = worker or make_worker()
        yield worker(task)


def check_input(source: Path) -> None:
    """One clear line when the input is missing or of a kind this command does not read."""
    if not source.exists():
        raise PasError(f"{source}: not found; give a folder of images / tar shards, an img2dataset output folder, "
                       "or a URL list (.txt, .csv or .parquet with a url column)")
    if source.is_file() and source.suffix.lower() not in URL_LIST_SUFFIXES | {".tar", ".lst"}:
        raise PasError(f"{source}: not a folder, tar shard, .lst list or URL list (.txt, .csv, .parquet)")


def embed_pool_folder(source: Path, out: Path, clip: str | Path, part_size: int = PART_SIZE, batch_size: int = 64,
                      min_side: int = 16, max_parts: int | None = None) -> dict[str, Any]:
    """Write OUT's clip-retrieval layout from `source`; finished parts are kept; `max_parts` stops after embedding
    that many parts (a run stopped early resumes). Returns counts (parts, kept, embedded, rows)."""
    from pas.core.atomic import atomic_path
    from pas.core.scaleout import map_on_ray, ray_address
    from pas.models.registry import read_entry

    check_input(source)
    if part_size < 1:
        raise PasError(f"--part-size {part_size}: give a positive number of images per part")
    entry = read_entry(clip)
    if source.is_file() and source.suffix.lower() in URL_LIST_SUFFIXES:
        source = download_url_list(source, out / "download" / "shards", min_side)
    local = not (source.is_dir() and is_img2dataset(source))
    parts: Iterator[list[Entry]] = (_local_parts(source, part_size) if local else
                                    (_img2dataset_part(shard) for shard in sorted(source.glob("*.tar"))))
    model_file = out / MODEL_FILE
    if model_file.is_file() and model_file.read_text().strip() != entry["name"]:
        raise PasError(f"{out} holds a pool embedded with {model_file.read_text().strip()!r}, not {entry['name']!r}; "
                       "choose another OUT folder or the same --clip")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(model_file) as tmp:
        tmp.write_text(entry["name"] + "\n")
    counts = {"parts": 0, "kept": 0, "embedded": 0, "rows": 0, "complete": True}

    def pending() -> Iterator[PartTask]:
        for index, entries in enumerate(parts):
            counts["parts"] += 1
            digest = _digest(entry["sha256"], min_side, entries)
            if _finished(out, index, digest):
                counts["kept"] += 1
                continue
            if max_parts is not None and counts["embedded"] + started[0] >= max_parts:
                counts["complete"] = False
                return
            started[0] += 1
            yield PartTask(index, digest, entries)

    started = [0]
    make_worker = partial(_part_worker, str(clip), batch_size, min_side, out, local)
    address = ray_address()
    if address:
        done = map_on_ray(make_worker, pending(), address, "pool embed (ray)")
    else:
        done = _inline(make_worker, pending())
    for _ in done:
        counts["embedded"] += 1
    if counts["complete"]:
        if counts["parts"] == 0:
            raise PasError(f"{source} holds no images; give a folder of images / tar shards or img2dataset output")
        for folder, pattern in (("img_emb", "img_emb_*.npy"), ("metadata", "metadata_*.parquet")):
            for stale in (out / folder).glob(pattern):
                if int(stale.stem.rpartition("_")[2]) >= counts["parts"]:
                    stale.unlink()
        counts["rows"] = sum(pq.read_metadata(part_paths(out, i)[1]).num_rows for i in range(counts["parts"]))
        if counts["rows"] == 0:
            raise PasError(f"{source} holds no usable image (all undecodable or smaller than {min_side} px)")
    log.info("pool embed: %d part(s), %d kept from an earlier run, %d embedded, %d images -> %s",
             counts["parts"], counts["kept"], counts["embedded"], counts["rows"], out)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: pas pool embed FOLDER|URL-LIST OUT [options]."""
    import argparse
    import json

    from pas.core.runtime import setup_logging
    from pas.core.stage import command_parser

    parser = command_parser("pool", "team pools: embed once (pas pool embed --help), point pool_index.source at it")
    parser.add_argument("--clip", dest="pool_clip", default="models/clip",
                        help="resolved CLIP model folder (dvc repro models), for every action")
    commands = parser.add_subparsers(dest="action", required=True)
    embed = commands.add_parser("embed", help=__doc__.strip().splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    embed.add_argument("source", type=Path, help="folder of images / tar shards, img2dataset output, or URL list")
    embed.add_argument("out", type=Path, help="output folder (clip-retrieval layout)")
    embed.add_argument("--clip", default=None, help="resolved CLIP model folder; None: pas pool --clip (models/clip)")
    embed.add_argument("--part-size", type=int, default=PART_SIZE, help="images per part of a plain folder")
    embed.add_argument("--batch-size", type=int, default=64, help="images per CLIP batch")
    embed.add_argument("--min-side", type=int, default=16, help="smaller images are skipped")
    embed.add_argument("--max-parts", type=int, default=None, help="stop after embedding this many parts")
    args = parser.parse_args(argv)
    setup_logging()
    counts = embed_pool_folder(args.source, args.out, args.clip or args.pool_clip, args.part_size, args.batch_size, args.min_side,
                               args.max_parts)
    print(json.dumps(counts))
    return 0
