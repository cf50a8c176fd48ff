"""Exports of the curated set: HF-style parquet, ImageFolder by concept, WebDataset shards, byte for byte."""
import json

import pyarrow.parquet as pq
import pytest

from conftest import make_image
from pas.core.shards import encode_jpeg, read_shard, write_shard, write_table
from pas.curation.export import export, main


@pytest.fixture
def curated(tmp_path):
    """7 curated rows over two shards and two concepts (one with a space in its name)."""
    rows, payload = [], {}
    for s in range(2):
        records = []
        for i in range(4 if s == 0 else 3):
            key = f"k{s}{i}"
            payload[key] = encode_jpeg(make_image(10 * s + i))
            records.append((key, payload[key], {}))
            rows.append({"key": key, "shard": str(tmp_path / f"c-{s:06d}.tar"),
                         "source": ("generated", "retrieved")[i % 2],
                         "concept": ("cat", "snow leopard")[i % 2], "prompt": "a photo", "seed": i, "width": 64,
                         "height": 64, "domain_score": 0.5, "concept_score": 0.9})
        write_shard(tmp_path / f"c-{s:06d}.tar", records)
    write_table(rows, tmp_path / "manifest.parquet")
    return tmp_path / "manifest.parquet", payload


def test_every_format_holds_every_image_byte_for_byte(curated, tmp_path):
    manifest, payload = curated
    written = export(manifest, tmp_path / "out")
    assert written == {"parquet": 7, "imagefolder": 7, "webdataset": 7}

    files = sorted((tmp_path / "out" / "parquet" / "data").glob("*.parquet"))
    table = pq.read_table(files[0])
    assert [f.name for f in files] == ["train-00000-of-00001.parquet"]
    assert table.column_names == ["image", "image_name", "concept", "source", "url", "caption", "pool_id"]
    assert json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["image"] == {"_type": "Image"}
    for row in table.to_pylist():
        assert row["image"]["bytes"] == payload[row["image_name"][:-4]] and row["image"]["path"] == row["image_name"]
    assert "7 images in 1 parquet file" in (tmp_path / "out" / "parquet" / "README.md").read_text()

    folder = tmp_path / "out" / "imagefolder"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["cat", "snow leopard"]
    assert len(list((folder / "cat").glob("*.jpg"))) == 4
    assert (folder / "snow leopard" / "k01.jpg").read_bytes() == payload["k01"]
    lines = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 7 and all((folder / line["file_name"]).is_file() for line in lines)
    assert {line["file_name"]: line["concept"] for line in lines}["snow leopard/k01.jpg"] == "snow leopard"

    shards = sorted((tmp_path / "out" / "webdataset").glob("*.tar"))
    records = [r for shard in shards for r in read_shard(shard)]
    assert {k: data for k, data, _ in records} == payload
    assert all(meta["concept"] in ("cat", "snow leopard") and "domain_score" in meta for _, _, meta in records)


def test_command_line_writes_the_chosen_formats_only(curated, tmp_path):
    manifest, _ = curated
    argv = ["--curated", str(manifest), "--out", str(tmp_path / "x"), "--formats", "webdataset"]
    assert main(argv) == {"webdataset": 7}
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["webdataset"]
    with pytest.raises(SystemExit) as stop:
        main(["--curated", str(manifest), "--out", str(tmp_path / "y"), "--formats", "zip"])
    assert stop.value.code == 2 and not (tmp_path / "y").exists()
