"""Export the curated dataset: HF-style parquet, an ImageFolder tree by concept, WebDataset shards.

    python -m pas.curation.export --curated data/curated/manifest.parquet --out exports/pas-animals
    python -m pas.curation.export --curated data/curated/manifest.parquet --out exports/x --formats parquet

<out>/parquet/data/train-00000-of-0000N.parquet   image {bytes, path}, image_name, concept, source
                                                 (as the PaS releases; `datasets.load_dataset("parquet", ...)`
                                                 decodes `image` as an Image feature) + README.md card
<out>/imagefolder/<safe concept>/<image_name>     the stored JPEG bytes, one folder per concept (core.names)
<out>/webdataset/pas-000000.tar                  key.jpg + key.json (concept, source, prompt, scores)
Each format is written to a temporary folder; all are renamed into place only when every one is complete. Images are copied byte for byte.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pas.core.names import safe_name
from pas.core.shards import atomic_dir, read_table, shard_name, write_shard
from pas.curation.fingerprints import read_bytes

log = logging.getLogger(__name__)

ATTRIBUTION = ("url", "caption", "pool_id")  # where a retrieved image came from (empty for generated ones)
HF_FEATURES = {"image": {"_type": "Image"}, "image_name": {"dtype": "string", "_type": "Value"},
               "concept": {"dtype": "string", "_type": "Value"}, "source": {"dtype": "string", "_type": "Value"},
               **{name: {"dtype": "string", "_type": "Value"} for name in ATTRIBUTION}}
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
META = ("key", "source", "concept", "prompt", "seed", "width", "height", "domain_score", "concept_score",
        "pool_id", "url", "caption", "similarity")  # attribution of every retrieved image


def image_name(row: dict[str, Any]) -> str:
    """The exported file name of a row: <key>.jpg."""
    return f"{row['key']}.jpg"


def _images(rows: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], bytes]]:
    for i, data in read_bytes(rows):
        yield rows[i], data


def export_parquet(rows: list[dict[str, Any]], out: Path, rows_per_file: int = 10_000) -> int:
    """HF-style parquet files under out/data plus a dataset card; returns the image count."""
    files = max(1, -(-len(rows) // rows_per_file))
    schema = pa.schema([("image", IMAGE_TYPE), ("image_name", pa.string()), ("concept", pa.string()),
                        ("source", pa.string()), *((name, pa.string()) for name in ATTRIBUTION)],
                       metadata={"huggingface": json.dumps({"info": {"features": HF_FEATURES}})})
    count, part, batch = 0, 0, []
    (out / "data").mkdir(parents=True)

    def flush() -> None:
        nonlocal part
        table = pa.Table.from_pylist(batch, schema=schema)
        pq.write_table(table, out / "data" / f"train-{part:05d}-of-{files:05d}.parquet")
        part += 1
        batch.clear()

    for row, data in _images(rows):
        batch.append({"image": {"bytes": data, "path": image_name(row)}, "image_name": image_name(row),
                      "concept": row["concept"], "source": row["source"],
                      **{name: row.get(name) for name in ATTRIBUTION}})
        count += 1
        if len(batch) == rows_per_file:
            flush()
    if batch or part == 0:
        flush()
    (out / "README.md").write_text(_card(count, part))
    return count


def _card(count: int, files: int) -> str:
    return ("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
            "dataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: image_name\n    dtype: string\n"
            "  - name: concept\n    dtype: string\n  - name: source\n    dtype: string\n"
            + "".join(f"  - name: {name}\n    dtype: string\n" for name in ATTRIBUTION) + "---\n"
            f"# pas curated dataset\n\n{count} images in {files} parquet file(s), "
            "curated by pas (Precision at Scale): generated and retrieved images, filtered, de-duplicated and "
            "decontaminated against the evaluation sets.\n")


def export_imagefolder(rows: list[dict[str, Any]], out: Path) -> int:
    """out/<concept>/<key>.jpg with the stored bytes, and out/metadata.jsonl (the HF imagefolder convention: one
    line per image with its file_name, concept, source and attribution); returns the image count."""
    count = 0
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metadata.jsonl", "w") as metadata:
        for row, data in _images(rows):
            folder = out / safe_name(row["concept"])  # distinct names never share a folder
            folder.mkdir(parents=True, exist_ok=True)
            (folder / image_name(row)).write_bytes(data)
            record = {"file_name": f"{folder.name}/{image_name(row)}", **{k: row.get(k) for k in META}}
            metadata.write(json.dumps(record, default=str) + "\n")
            count += 1
    return count


def export_webdataset(rows: list[dict[str, Any]], out: Path, shard_size: int = 5_000) -> int:
    """out/pas-NNNNNN.tar shards of key.jpg + key.json; returns the image count."""
    out.mkdir(parents=True, exist_ok=True)
    records = ((row["key"], data, {k: row.get(k) for k in META}) for row, data in _images(rows))
    count, index = 0, 0
    while True:
        chunk = [record for _, record in zip(range(shard_size), records)]
        if not chunk:
            break
        count += write_shard(out / shard_name("pas", index), chunk)
        index += 1
    return count


FORMATS: dict[str, Callable[[list[dict[str, Any]], Path], int]] = {
    "parquet": export_parquet, "imagefolder": export_imagefolder, "webdataset": export_webdataset}


def export(curated: str | Path, out: str | Path, formats: Sequence[str] = tuple(FORMATS)) -> dict[str, int]:
    """Write each format under out/<format>; returns images written per format."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export format {unknown[0]!r}; use one of {', '.join(FORMATS)}")
    rows = read_table(curated).to_pylist()
    written = {}
    with contextlib.ExitStack() as stack:  # every format renamed into place only when all of them succeeded
        for name in formats:
            tmp = stack.enter_context(atomic_dir(Path(out) / name))
            written[name] = FORMATS[name](rows, tmp)
            log.info("exported %d images as %s to %s", written[name], name, Path(out) / name)
    if any(n != len(rows) for n in written.values()):
        log.warning("the manifest lists %d images but %s were exported (missing from their shards)", len(rows), written)
    return written


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    """Command line: python -m pas.curation.export --curated <manifest> --out <folder> [--formats ...]."""
    from pas.core.runtime import setup_logging

    setup_logging()
    parser = argparse.ArgumentParser(prog="python -m pas.curation.export", description=__doc__.splitlines()[0])
    parser.add_argument("--curated", default="data/curated/manifest.parquet", help="curated manifest (dedup output)")
    parser.add_argument("--out", required=True, help="folder to write the exports into")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    args = parser.parse_args(argv)
    written = export(args.curated, args.out, args.formats)
    print(json.dumps(written))
    return written


if __name__ == "__main__":
    main()
