"""Export the curated dataset: HF parquet, an ImageFolder tree by concept, WebDataset shards; each with a dataset card.

    pas export --out exports/pas-animals
    pas export --out exports/x --formats parquet --license cc-by-4.0

<out>/parquet/data/train-0000K-of-0000N.parquet  image {bytes, path}, concept (a ClassLabel: the HF features sit in
                                                 the parquet schema), then the per-image fields (FIELDS)
<out>/imagefolder/<safe concept>/<key>.jpg       the stored JPEG bytes, one folder per concept (core.names), and
<out>/imagefolder/metadata.jsonl                 one line per image: file_name, concept and FIELDS (HF imagefolder)
<out>/webdataset/pas-000000.tar                  key.jpg + key.json (concept, label = class index, FIELDS)
<out>/<format>/README.md                         the dataset card: YAML front matter (license, task and size
                                                 categories, features with the concept as a ClassLabel), per-class
                                                 counts, per-image fields, license note, provenance, how to load
Each format is written to a temporary folder; all are renamed into place only when every one is complete. Images are
copied byte for byte. Generated images keep prompt, seed and model; retrieved ones url, caption, pool_id, similarity.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pas.core.names import safe_name
from pas.core.provenance import provenance_markdown, tiny_warning
from pas.core.shards import atomic_dir, read_shard, read_table, shard_name, write_shard

log = logging.getLogger(__name__)

# per-image fields after `concept`, with their HF dtypes; the source-specific ones are empty for the other source
FIELDS = {"key": "string", "source": "string", "prompt": "string", "seed": "int64", "model": "string",
          "url": "string", "caption": "string", "pool_id": "string", "similarity": "float64", "width": "int64",
          "height": "int64", "domain_score": "float64", "concept_score": "float64"}
ONLY = {"generated": ("prompt", "seed", "model"), "retrieved": ("url", "caption", "pool_id", "similarity")}
ABOUT = {"key": "the image's id in the pipeline", "source": "`generated` (text-to-image) or `retrieved` (image pool)",
         "prompt": "generated: the text prompt", "seed": "generated: the sampling seed",
         "model": "generated: the generator (pinned under Provenance)", "url": "retrieved: the source URL, when known",
         "caption": "retrieved: the pool's caption, when known", "pool_id": "retrieved: the image's id in the pool",
         "similarity": "retrieved: CLIP cosine of the image to its concept's query",
         "width": "pixels", "height": "pixels", "domain_score": "CLIP domain score that passed the filter",
         "concept_score": "CLIP probability of its own concept"}
ARROW = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
DEFAULT_LICENSE = "other"
LICENSE_NOTE = ("Mixed sources: generated images follow the license of the generator that made them (see the models "
                "under Provenance), retrieved images the licenses of their sources (see `url` / `pool_id`); check "
                "both before redistributing.")
Record = tuple[dict[str, Any], bytes]


@dataclass(frozen=True)
class CardInfo:
    """What a card says besides its counts: class names (ClassLabel order), license, provenance (or None)."""

    names: list[str]
    license: str = DEFAULT_LICENSE
    provenance: dict[str, Any] | None = None
    counts: Counter = field(default_factory=Counter)  # (concept, source) -> images written


def image_name(row: dict[str, Any]) -> str:
    """The exported file name of a row: <key>.jpg."""
    return f"{row['key']}.jpg"


def image_record(row: dict[str, Any], shard_meta: dict[str, Any]) -> dict[str, Any]:
    """concept + FIELDS of one image: the manifest row, completed from its shard's json (e.g. a generator's model)."""
    record: dict[str, Any] = {"concept": row["concept"]}
    for name, dtype in FIELDS.items():
        value = row.get(name) if row.get(name) is not None else shard_meta.get(name)
        if any(name in only for source, only in ONLY.items() if source != row["source"]):
            value = None
        record[name] = None if value is None else {"int64": int, "float64": float}.get(dtype, str)(value)
    return record


def _records(rows: list[dict[str, Any]]) -> Iterator[Record]:
    """(record, stored bytes) per row, reading each shard once, in shard order."""
    by_shard: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_shard.setdefault(row["shard"], {})[row["key"]] = row
    for shard, wanted in by_shard.items():
        for key, data, meta in read_shard(shard):
            if key in wanted:
                yield image_record(wanted[key], meta), data


def hf_features(names: list[str]) -> dict[str, Any]:
    """The `datasets` Features dict (as Features.to_dict writes it) of the parquet export."""
    return {"image": {"_type": "Image"}, "concept": {"names": list(names), "_type": "ClassLabel"},
            **{name: {"dtype": dtype, "_type": "Value"} for name, dtype in FIELDS.items()}}


def export_parquet(records: Iterable[Record], out: Path, names: list[str], rows_per_file: int = 10_000) -> int:
    """out/data/train-*.parquet: image, concept as a class index, FIELDS; the schema carries the HF features."""
    schema = pa.schema([("image", IMAGE_TYPE), ("concept", pa.int64()),
                        *((name, ARROW[dtype]) for name, dtype in FIELDS.items())],
                       metadata={"huggingface": json.dumps({"info": {"features": hf_features(names)}})})
    label = {name: i for i, name in enumerate(names)}
    (out / "data").mkdir(parents=True)
    parts, batch, count = [], [], 0

    def flush() -> None:
        path = out / "data" / f".part-{len(parts):05d}.parquet"
        pq.write_table(pa.Table.from_pylist(batch, schema=schema), path)
        parts.append(path)
        batch.clear()

    for record, data in records:
        batch.append({**record, "image": {"bytes": data, "path": image_name(record)},
                      "concept": label[record["concept"]]})
        count += 1
        if len(batch) == rows_per_file:
            flush()
    if batch or not parts:
        flush()
    for i, path in enumerate(parts):  # the total is known only now: train-00000-of-00002.parquet
        path.rename(out / "data" / f"train-{i:05d}-of-{len(parts):05d}.parquet")
    return count


def export_imagefolder(records: Iterable[Record], out: Path, names: list[str]) -> int:
    """out/<concept>/<key>.jpg with the stored bytes, and out/metadata.jsonl (the HF imagefolder convention: one line
    per image, file_name then concept and FIELDS); returns the image count."""
    count = 0
    with open(out / "metadata.jsonl", "w") as metadata:
        for record, data in records:
            folder = out / safe_name(record["concept"])  # distinct names never share a folder
            folder.mkdir(exist_ok=True)
            (folder / image_name(record)).write_bytes(data)
            metadata.write(json.dumps({"file_name": f"{folder.name}/{image_name(record)}", **record}) + "\n")
            count += 1
    return count


def export_webdataset(records: Iterable[Record], out: Path, names: list[str], shard_size: int = 5_000) -> int:
    """out/pas-NNNNNN.tar shards of key.jpg + key.json (concept, label, FIELDS); returns the image count."""
    label = {name: i for i, name in enumerate(names)}
    samples = ((r["key"], data, {**r, "label": label[r["concept"]]}) for r, data in records)
    count, index = 0, 0
    while chunk := [sample for _, sample in zip(range(shard_size), samples)]:
        count += write_shard(out / shard_name("pas", index), chunk)
        index += 1
    return count


FORMATS: dict[str, Callable[[Iterable[Record], Path, list[str]], int]] = {
    "parquet": export_parquet, "imagefolder": export_imagefolder, "webdataset": export_webdataset}


def _yaml_features(names: list[str], fmt: str) -> list[dict[str, Any]]:
    concept = {"name": "concept", "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(names)}}}}
    fields = [{"name": name, "dtype": dtype} for name, dtype in FIELDS.items()]
    if fmt == "webdataset":  # the columns datasets' webdataset builder makes: the json becomes a struct
        struct = [concept, {"name": "label", "dtype": "int64"}, *fields]
        return [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"},
                {"name": "jpg", "dtype": "image"}, {"name": "json", "struct": struct}]
    return [{"name": "image", "dtype": "image"}, concept, *fields]


DATA_FILES = {"parquet": "data/train-*.parquet", "imagefolder": ["*/*.jpg", "metadata.jsonl"], "webdataset": "*.tar"}
SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


def size_category(n: int) -> str:
    """The Hub's size_categories bucket of n examples."""
    return next((label for bound, label in SIZES if n < bound), "1B<n<10B")


def title(info: CardInfo) -> str:
    """The card's title: pas <domain> curated dataset."""
    domain = ((info.provenance or {}).get("params") or {}).get("domain")
    return f"pas {domain} curated dataset" if domain else "pas curated dataset"


def front_matter(fmt: str, info: CardInfo, total: int) -> dict[str, Any]:
    """The card's YAML metadata: license, categories, tags, the data files and features (concept: ClassLabel)."""
    tiny = info.provenance is not None and tiny_warning(info.provenance) is not None
    features = _yaml_features(info.names, fmt)
    meta: dict[str, Any] = {"license": info.license}
    if info.license == "other":
        meta["license_name"] = "mixed-sources"
    meta.update({"pretty_name": title(info), "task_categories": ["image-classification"],
                 "size_categories": [size_category(total)],
                 "tags": ["pas", "synthetic", "image-retrieval", *(["random-tiny-models"] if tiny else [])],
                 "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILES[fmt]}],
                              # what load_dataset(<folder>) applies (the webdataset builder reads dataset_info's)
                              **({} if fmt == "webdataset" else {"features": features})}],
                 "dataset_info": {"features": copy.deepcopy(features)}})  # a copy: no YAML anchors
    return meta


IN_THIS_FOLDER = 'import os\nfolder = os.path.abspath(".")  # run in this card\'s folder, or set its path here\n'
HOW_TO_LOAD = {  # str.format templates ({last}: the last shard number)
    "parquet": (IN_THIS_FOLDER + 'from datasets import load_dataset\n'
                'ds = load_dataset("parquet", data_dir=f"{{folder}}/data", split="train")  # or load_dataset(folder)\n'
                'ds.features["concept"].names'),
    "imagefolder": (IN_THIS_FOLDER + 'from datasets import load_dataset\n'
                    'ds = load_dataset(folder, split="train")  # concept is a ClassLabel (from this card)\n'
                    '# or: load_dataset("imagefolder", data_dir=folder, split="train") (concept as text)\n'
                    '# or: torchvision.datasets.ImageFolder(folder)'),
    "webdataset": (IN_THIS_FOLDER + 'import webdataset as wds\n'
                   'ds = wds.WebDataset(f"{{folder}}/pas-{{{{000000..{last:06d}}}}}.tar", shardshuffle=False)'
                   '.decode("pil").to_tuple("jpg", "json")\n'
                   '# or: datasets.load_dataset(folder, split="train")  # json.concept is a ClassLabel'),
}


def dataset_card(fmt: str, info: CardInfo, files: int = 1) -> str:
    """The README.md of one exported format: YAML front matter, then counts, fields, license, provenance, loading."""
    total = sum(info.counts.values())
    by_source = Counter()
    for (_, source), n in info.counts.items():
        by_source[source] += n
    summary = (f"{total} images of {len(info.names)} concepts ({fmt}), curated by pas (Precision at Scale): "
               "generated and retrieved images, filtered by CLIP domain and concept scores, de-duplicated, "
               "decontaminated against the evaluation sets and balanced across concepts.")
    warning = tiny_warning(info.provenance) if info.provenance is not None else None
    lines = ["---", yaml.safe_dump(front_matter(fmt, info, total), sort_keys=False, allow_unicode=True).rstrip(),
             "---", "", f"# {title(info)}", "", *([f"> **Warning:** {warning}.", ""] if warning else []),
             summary, "", "## Classes", "", "| label | concept | images | generated | retrieved |",
             "|---:|---|---:|---:|---:|"]
    for i, name in enumerate(info.names):
        gen, ret = info.counts[(name, "generated")], info.counts[(name, "retrieved")]
        lines.append(f"| {i} | {name.replace('|', '/')} | {gen + ret} | {gen} | {ret} |")
    lines += [f"| | **total** | {total} | {by_source['generated']} | {by_source['retrieved']} |", "",
              "## Per-image fields", "", "- `concept`: the class (ClassLabel; `label` is its index in WebDataset json)",
              *(f"- `{name}`: {ABOUT[name]}" for name in FIELDS), "", "## License", "",
              f"`{info.license}`. {LICENSE_NOTE}", "",
              provenance_markdown(info.provenance, with_params=True, warn=False) if info.provenance is not None
              else "## Provenance\n\nnot recorded (exported without models/lock.json and params)\n",
              "## How to load", "", "```python", HOW_TO_LOAD[fmt].format(last=max(files - 1, 0)),
              "```", ""]
    return "\n".join(lines)


def export(curated: str | Path, out: str | Path, formats: Sequence[str] = tuple(FORMATS),
           license_id: str = DEFAULT_LICENSE, provenance: dict[str, Any] | None = None) -> dict[str, int]:
    """Write each format (and its card) under out/<format>; returns images written per format."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export format {unknown[0]!r}; use one of {', '.join(FORMATS)}")
    rows = read_table(curated).to_pylist()
    if missing := sorted({row["shard"] for row in rows if not Path(row["shard"]).is_file()}):
        from pas.core.config import PasError

        raise PasError(f"{len(missing)} shard(s) listed in {curated} not found (e.g. {missing[0]}); shard paths are "
                       "relative to the repository root: run pas export there, after dvc pull")
    names = sorted({row["concept"] for row in rows})
    written = {}
    with contextlib.ExitStack() as stack:  # every format renamed into place only when all of them succeeded
        for name in formats:
            tmp = stack.enter_context(atomic_dir(Path(out) / name))
            info = CardInfo(names, license_id, provenance)
            written[name] = FORMATS[name](_counted(_records(rows), info.counts), tmp, names)
            card = dataset_card(name, info, len(list(tmp.glob("*.tar"))))    # no path in it: the card travels
            (tmp / "README.md").write_text(card, encoding="utf-8")
            log.info("exported %d images as %s to %s", written[name], name, Path(out) / name)
    if any(n != len(rows) for n in written.values()):
        log.warning("the manifest lists %d images but %s were exported (missing from their shards)", len(rows), written)
    return written


def _counted(records: Iterable[Record], counts: Counter) -> Iterator[Record]:
    for record, data in records:
        counts[(record["concept"], record["source"])] += 1
        yield record, data


BACKBONE_FILES = ("config.json", "model.safetensors", "README.md", "model_card.json")


def export_backbone(folder: str | Path, out: Path) -> None:
    """Copy the pretrain stage's timm folder (config.json, model.safetensors, model card) to `out`, atomically."""
    import shutil

    from pas.core.config import PasError
    from pas.core.shards import atomic_dir

    missing = [name for name in BACKBONE_FILES[:2] if not (Path(folder) / name).is_file()]
    if missing:
        raise PasError(f"{folder} is not a pretrained backbone folder (no {', '.join(missing)}); run the pretrain stage "
                       f"(dvc repro pretrain) or name the folder: --backbone PATH")
    with atomic_dir(out) as tmp:
        for name in BACKBONE_FILES:
            if (Path(folder) / name).is_file():
                shutil.copy2(Path(folder) / name, tmp / name)
    log.info("backbone exported to %s (timm.create_model('local-dir:%s', pretrained=True))", out, out)


LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]*")   # the form of Hugging Face's license ids: cc-by-4.0, apache-2.0


def check_license(license_id: str) -> None:
    """Refuse a --license that is not a license id as a dataset card's `license:` field takes it."""
    from pas.core.config import ConfigError

    if not LICENSE_ID.fullmatch(license_id):
        raise ConfigError(f"--license {license_id!r} is not a license id; use a Hugging Face id such as cc-by-4.0, "
                          "apache-2.0, mit or other (lowercase letters, digits, '.', '-', '+')")


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    """Command line: pas export --out <folder> [--curated <manifest>] [--formats ...] [--license ID]."""
    from pas.core.config import ConfigError, load_params
    from pas.core.provenance import DATASET_PARAMS, collect_provenance
    from pas.core.runtime import setup_logging

    setup_logging()
    from pas.core.stage import command_parser

    parser = command_parser("export", __doc__)
    parser.add_argument("--curated", default="data/curated/manifest.parquet", help="curated manifest (dedup output)")
    parser.add_argument("--out", required=True, help="folder to write the exports into")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS), help="formats to write")
    parser.add_argument("--license", default=DEFAULT_LICENSE,
                        help="the cards' license id (other: generated images follow their generator's license, "
                             "retrieved images their sources' licenses)")
    parser.add_argument("--params", default=None,
                        help="params file, for the cards' provenance (default: params.yaml when there is one)")
    parser.add_argument("--lock", default="models/lock.json", help="models lock, for the cards' provenance")
    parser.add_argument("--backbone", nargs="?", const="data/pretrain", default=None, metavar="FOLDER",
                        help="also export the pretrained backbone (a timm local-dir / hf-hub folder) to OUT/backbone; "
                             "FOLDER defaults to data/pretrain")
    args = parser.parse_args(argv)
    check_license(args.license)
    if args.params is not None and not Path(args.params).is_file():
        raise ConfigError(f"--params {args.params}: no such file; pass the params file the curated set was built "
                          "with, or leave --params out")
    if args.backbone is not None:
        export_backbone(args.backbone, Path(args.out) / "backbone")
    params_file = Path(args.params or "params.yaml")
    params = load_params(params_file) if params_file.is_file() else None
    picked = None if params is None else {k: v for k, v in params.items() if k in DATASET_PARAMS}
    written = export(args.curated, args.out, args.formats, args.license, collect_provenance(".", picked, args.lock))
    print(json.dumps(written))
    return written


if __name__ == "__main__":
    main()
