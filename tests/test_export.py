"""Exports of the curated set (HF parquet, ImageFolder, WebDataset), byte for byte, each with a dataset card; loaded
the way a user would: `datasets.load_dataset`, `webdataset`, `huggingface_hub.DatasetCard`."""
import json
import re

import datasets
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import make_image
from datasets import ClassLabel, Dataset, load_dataset
from huggingface_hub import DatasetCard

from pas.core.config import ConfigError
from pas.core.provenance import collect_provenance
from pas.core.shards import encode_jpeg, read_shard, write_shard, write_table
from pas.curation.export import export, main

NAMES = ["cat", "snow leopard"]
LOCK = {"generator": {"name": "tiny://sd", "revision": "config", "sha256": "ab" * 32, "source": "tiny"},
        "clip": {"name": "tiny://clip", "revision": "config", "sha256": "cd" * 32, "source": "tiny"}}


@pytest.fixture
def curated(tmp_path):
    """7 curated rows over two shards: generated ones (prompt, seed; the model only in the shard json) and retrieved
    ones (url, caption, pool id, similarity), two concepts (one with a space in its name): cat 3, snow leopard 4."""
    rows, payload = [], {}
    for s in range(2):
        records = []
        for i in range(4 if s == 0 else 3):
            key, source = f"k{s}{i}", ("generated", "retrieved")[i % 2]
            payload[key] = encode_jpeg(make_image(10 * s + i))
            meta = {"model": "tiny://sd", "revision": "config"} if source == "generated" else {"rank": i}
            records.append((key, payload[key], meta))
            row = {"key": key, "shard": str(tmp_path / f"c-{s:06d}.tar"), "source": source,
                   "concept": NAMES[(s + i) % 2], "prompt": f"a photo {i}", "seed": None, "width": 64, "height": 64,
                   "similarity": None, "pool_id": None, "url": None, "caption": None, "domain_score": 0.5,
                   "concept_score": 0.9}
            if source == "generated":
                row["seed"] = 100 + i
            else:
                row.update(similarity=0.25, pool_id=f"part0/{key}.png", url=f"https://example.org/{key}.jpg",
                           caption=f"caption of {key}")
            rows.append(row)
        write_shard(tmp_path / f"c-{s:06d}.tar", records)
    write_table(rows, tmp_path / "manifest.parquet")
    (tmp_path / "lock.json").write_text(json.dumps(LOCK))
    return tmp_path / "manifest.parquet", payload, {r["key"]: r for r in rows}


@pytest.fixture
def exported(curated, tmp_path):
    manifest, payload, rows = curated
    prov = collect_provenance(tmp_path, {"size": 7, "domain": "animals"}, tmp_path / "lock.json")
    written = export(manifest, tmp_path / "out", provenance=prov)
    return tmp_path / "out", written, payload, rows, prov


def load(how, tmp_path, **kwargs):
    return load_dataset(how, split="train", cache_dir=str(tmp_path / "hf-cache"), **kwargs)


def check_source_fields(record, rows):
    """Generated images keep prompt, seed, model; retrieved ones url, caption, pool id, similarity."""
    row = rows[record["key"]]
    if row["source"] == "generated":
        assert (record["prompt"], record["seed"], record["model"]) == (row["prompt"], row["seed"], "tiny://sd")
        assert record["url"] is record["caption"] is record["pool_id"] is record["similarity"] is None
    else:
        assert (record["url"], record["caption"], record["pool_id"]) == (row["url"], row["caption"], row["pool_id"])
        assert record["similarity"] == pytest.approx(0.25)
        assert record["seed"] is record["model"] is record["prompt"] is None


def test_every_format_holds_every_image_byte_for_byte(exported):
    out, written, payload, _, _ = exported
    assert written == {"parquet": 7, "imagefolder": 7, "webdataset": 7}
    files = sorted((out / "parquet" / "data").glob("*.parquet"))
    assert [f.name for f in files] == ["train-00000-of-00001.parquet"]
    for row in pq.read_table(files[0]).to_pylist():
        assert row["image"]["bytes"] == payload[row["key"]] and row["image"]["path"] == f"{row['key']}.jpg"
    folder = out / "imagefolder"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == NAMES
    assert (folder / "snow leopard" / "k01.jpg").read_bytes() == payload["k01"]
    records = [r for shard in sorted((out / "webdataset").glob("*.tar")) for r in read_shard(shard)]
    assert {k: data for k, data, _ in records} == payload


def test_parquet_loads_in_datasets_with_the_concept_as_a_class_label(exported, tmp_path):
    out, _, _, rows, _ = exported
    ds = load("parquet", tmp_path, data_dir=str(out / "parquet" / "data"))
    assert isinstance(ds.features["concept"], ClassLabel) and ds.features["concept"].names == NAMES
    assert len(ds) == 7
    for record in ds:
        assert ds.features["concept"].int2str(record["concept"]) == rows[record["key"]]["concept"]
        assert record["image"].size == (64, 64)
        check_source_fields(record, rows)
    direct = Dataset.from_parquet(str(next((out / "parquet" / "data").glob("*.parquet"))),
                                  cache_dir=str(tmp_path / "hf-cache"))
    assert direct.features["concept"].names == NAMES


def test_imagefolder_loads_with_its_metadata_and_the_card_gives_the_class_label(exported, tmp_path):
    out, _, _, rows, _ = exported
    plain = load("imagefolder", tmp_path, data_dir=str(out / "imagefolder"))  # metadata.jsonl columns, no card
    assert len(plain) == 7 and {r["key"]: r["concept"] for r in plain} == {k: r["concept"] for k, r in rows.items()}
    for record in plain:
        check_source_fields(record, rows)
    carded = load(str(out / "imagefolder"), tmp_path)  # the folder as a dataset: its card's features apply
    assert carded.features["concept"].names == NAMES
    assert sorted(carded.features["concept"].int2str(r["concept"]) for r in carded) == sorted(
        r["concept"] for r in rows.values())


def test_webdataset_samples_keep_concept_label_and_source_fields(exported, tmp_path):
    out, _, _, rows, _ = exported
    shards = [str(p) for p in sorted((out / "webdataset").glob("*.tar"))]
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg", "json"))
    assert len(samples) == 7
    for key, image, meta in samples:
        assert meta["key"] == key and image.size == (64, 64)
        assert meta["concept"] == rows[key]["concept"] and NAMES[meta["label"]] == meta["concept"]
        check_source_fields(meta, rows)
    carded = load(str(out / "webdataset"), tmp_path)
    assert carded.features["json"]["concept"].names == NAMES


@pytest.mark.parametrize("fmt", ["parquet", "imagefolder", "webdataset"])
def test_every_card_parses_its_counts_equal_the_rows_and_its_loading_code_runs(exported, fmt, tmp_path,
                                                                                monkeypatch):
    out, _, _, rows, prov = exported
    card = DatasetCard.load(out / fmt / "README.md")
    assert card.data.license == "other" and card.data.task_categories == ["image-classification"]
    assert card.data.size_categories == ["n<1K"]
    features = card.data.dataset_info["features"]
    if fmt == "webdataset":
        features = next(f for f in features if f["name"] == "json")["struct"]
    concept = next(f for f in features if f["name"] == "concept")
    assert list(concept["dtype"]["class_label"]["names"].values()) == NAMES
    table = dict(re.findall(r"^\| \d+ \| ([^|]+) \| (\d+) \|", card.text, re.MULTILINE))
    actual = {name: sum(r["concept"] == name for r in rows.values()) for name in NAMES}
    assert {k.strip(): int(v) for k, v in table.items()} == actual == {"cat": 3, "snow leopard": 4}
    assert "| | **total** | 7 | 4 | 3 |" in card.text
    assert "random-weight tiny models (tiny://clip, tiny://sd)" in card.text  # the warning
    assert prov["params_digest"] in card.text and "not a git repository" in card.text
    assert "generator: tiny://sd (config, sha256 abababababab)" in card.text and prov["date"] in card.text
    assert "generated images follow the license of the generator" in card.text

    snippet = re.search(r"## How to load\n\n```python\n(.*?)```", card.text, re.DOTALL).group(1)
    assert str(out) not in card.text                      # no absolute path: the card travels with its folder
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.chdir(out / fmt)                            # where the card says to run it
    scope = {}
    exec(snippet, scope)  # noqa: S102 - the card's own instructions load what was exported
    assert len(list(scope["ds"])) == 7


def test_command_line_writes_the_chosen_formats_with_the_given_license(curated, tmp_path):
    manifest, _, _ = curated
    (tmp_path / "params.yaml").write_text("size: 7\ndomain: animals\npretrain:\n  epochs: 1\n")
    argv = ["--curated", str(manifest), "--out", str(tmp_path / "x"), "--formats", "webdataset", "--license",
            "cc-by-4.0", "--params", str(tmp_path / "params.yaml"), "--lock", str(tmp_path / "lock.json")]
    assert main(argv) == {"webdataset": 7}
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["webdataset"]
    card = DatasetCard.load(tmp_path / "x" / "webdataset" / "README.md")
    assert card.data.license == "cc-by-4.0" and "license_name" not in card.data.to_dict()
    assert "domain: animals" in card.text and "pretrain" not in card.text  # only the params that shaped the data
    with pytest.raises(SystemExit) as stop:
        main(["--curated", str(manifest), "--out", str(tmp_path / "y"), "--formats", "zip"])
    assert stop.value.code == 2 and not (tmp_path / "y").exists()
    with pytest.raises(ConfigError, match=r"^--params /nope.yaml: no such file; pass the params file the curated set "
                                          r"was built with, or leave --params out$"):
        main(["--curated", str(manifest), "--out", str(tmp_path / "y"), "--params", "/nope.yaml"])
    with pytest.raises(ConfigError, match=r"^--license 'bad license!' is not a license id; use a Hugging Face id"):
        main(["--curated", str(manifest), "--out", str(tmp_path / "y"), "--license", "bad license!"])
    assert not (tmp_path / "y").exists()


def test_the_backbone_exports_as_a_folder_timm_loads(tmp_path):
    import timm
    import torch

    from pas.core.config import PasError
    from pas.curation.export import export_backbone
    from pas.ssl.pretrain import save_timm_folder

    model = timm.create_model("test_resnet", num_classes=0)
    card = {"backbone": "test_resnet", "method": "dino", "feature_dim": model.num_features, "images": 32, "steps": 4,
            "dataset": {"name": "curated"}, "metrics": {"images_seen": 128}, "exported": "ema teacher",
            "input": {"image_size": 48, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (tmp_path / "pretrain").mkdir()
    save_timm_folder(model, tmp_path / "pretrain", card)
    export_backbone(tmp_path / "pretrain", tmp_path / "out" / "backbone")
    loaded = timm.create_model(f"local-dir:{tmp_path / 'out' / 'backbone'}", pretrained=True).eval()
    config = timm.data.resolve_data_config({}, model=loaded)
    assert config["input_size"] == (3, 48, 48) and tuple(config["mean"]) == (0.5, 0.5, 0.5)
    pixels = torch.randn(1, 3, 48, 48)
    assert torch.equal(loaded(pixels), model.eval()(pixels))
    assert "pretrained by pas (dino)" in (tmp_path / "out" / "backbone" / "README.md").read_text()
    with pytest.raises(PasError, match=r"is not a pretrained backbone folder \(no config.json, model.safetensors\)"):
        export_backbone(tmp_path / "nothing", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
