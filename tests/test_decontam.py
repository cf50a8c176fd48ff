"""Planted copies of downstream test images (resized, re-encoded, lightly cropped) are all removed."""
import io

import numpy as np
import pyarrow as pa
import pytest
import yaml
from PIL import Image

from conftest import REPO, make_image
from pas.core.config import build
from pas.core.shards import decode_image, encode_jpeg, write_shard, write_table
from pas.curation.decontam import Thresholds, decontaminate, eval_splits
from pas.curation.dedup import DedupConfig, curate
from pas.curation.embed import candidate_rows, stream_images
from pas.curation.fingerprints import read_fingerprints
from pas.models.clip import ClipEncoder


def png(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_split(path, images):
    write_table(pa.table({"image": [png(im) for im in images], "label": [i % 2 for i in range(len(images))],
                          "label_name": ["ab"[i % 2] for i in range(len(images))]}), path)


def resized(image, rng):
    side = int(rng.choice([40, 48, 96, 128]))
    return image.resize((side, side), Image.BICUBIC)


def reencoded(image, rng):
    return decode_image(encode_jpeg(image, int(rng.integers(60, 85))))


def cropped(image, rng):
    """Lightly cropped (up to 10% off each side, independently), then resized and re-encoded."""
    w, h = image.size
    left, top, right, bottom = (rng.uniform(0.02, 0.10, 4) * w).astype(int)
    return reencoded(resized(image.crop((left, top, w - right, h - bottom)), rng), rng)


@pytest.fixture(scope="module")
def scene(tmp_path_factory, tiny_models):
    """A downstream set (test + train), candidates with planted copies in a shard, their embeddings."""
    root = tmp_path_factory.mktemp("decontam")
    test = [make_image(100 + i) for i in range(40)]
    write_split(root / "downstream" / "toy" / "test.parquet", test)
    write_split(root / "downstream" / "toy" / "train.parquet", [make_image(200 + i) for i in range(40)])
    rng = np.random.default_rng(0)
    planted = {}
    for kind, fn in (("resized", resized), ("reencoded", reencoded), ("cropped", cropped)):
        for i in rng.choice(len(test), 8, replace=False):
            planted[f"{kind}-{i:02d}"] = fn(test[i], rng)
    images = {**planted, **{f"clean-{i:02d}": make_image(1000 + i) for i in range(60)}}
    write_shard(root / "cand-000000.tar", [(k, encode_jpeg(im, 90), {}) for k, im in images.items()])
    table = pa.Table.from_pylist([{"key": k, "shard": "cand-000000.tar", "source": "retrieved", "concept": "a"}
                                  for k in images])
    rows = candidate_rows([(table, root)])
    stats = []
    encoder = ClipEncoder(tiny_models["clip"])
    embeddings = encoder.encode_images(stream_images(rows, stats), total=len(rows))
    for row, stat in zip(rows, stats):
        row.update(stat, domain_score=0.0, concept_score=1.0)
    return {"root": root, "rows": rows, "embeddings": embeddings, "encoder": encoder, "planted": set(planted)}


def defaults():
    """The dedup thresholds of the repository's params.yaml."""
    return build(DedupConfig, yaml.safe_load((REPO / "params.yaml").read_text())["dedup"], "dedup")


def test_every_planted_copy_is_removed_with_the_default_thresholds(scene):
    cfg = defaults()
    rows = scene["rows"]
    content, thumbs = read_fingerprints(rows)
    dirty = decontaminate(scene["embeddings"], [r["pixel_hash"] for r in rows], thumbs,
                          eval_splits(scene["root"] / "downstream"), scene["encoder"],
                          Thresholds(cfg.eval_threshold, cfg.copy_threshold, cfg.copy_max_crop), cfg.search())
    flagged = {r["key"] for r, bad in zip(rows, dirty.mask) if bad}
    assert flagged == scene["planted"]  # all copies out, no clean image lost
    assert dirty.per_set == {"toy/test": len(scene["planted"]), "toy/train": 0}
    assert dirty.sizes == {"toy/test": 40, "toy/train": 40}
    by_kind = {}
    for r, signal in zip(rows, dirty.signal):
        if signal:
            by_kind.setdefault(r["key"].split("-")[0], set()).add(signal)
    assert set(by_kind) == {"resized", "reencoded", "cropped"}

    result = curate(rows, scene["embeddings"], content, dirty, 50, ["a"], cfg)
    assert not scene["planted"] & {r["key"] for r in result.curated}
    assert result.metrics["contaminated_by_set"]["toy/test"] == len(scene["planted"])
    removed = [d for d in result.decisions if d["status"] == "contaminated"]
    assert all(d["eval_set"] == "toy/test" and d["eval_item"] >= 0 for d in removed)


def test_the_clip_threshold_alone_misses_crops_with_the_tiny_model(scene):
    """Why copy_threshold exists: the tiny CLIP (one 64-pixel patch) is not crop invariant."""
    cfg = defaults()
    rows = scene["rows"]
    _, thumbs = read_fingerprints(rows)
    dirty = decontaminate(scene["embeddings"], [""] * len(rows), thumbs, eval_splits(scene["root"] / "downstream"),
                          scene["encoder"], Thresholds(cfg.eval_threshold, copy=0.0), cfg.search())
    missed = scene["planted"] - {r["key"] for r, bad in zip(rows, dirty.mask) if bad}
    assert missed and all(key.startswith("cropped") for key in missed)
