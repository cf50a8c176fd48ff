"""Planted copies of downstream test images (resized, re-encoded, lightly cropped) are all removed."""
import io
import logging

import numpy as np
import pyarrow as pa
import pytest
import yaml
from conftest import REPO, make_image
from PIL import Image

from pas.core.config import build
from pas.core.shards import decode_image, encode_jpeg, write_shard, write_table
from pas.curation.decontam import Thresholds, decontaminate, eval_splits
from pas.curation.dedup import DedupConfig, curate
from pas.curation.embed import candidate_rows, pixel_hash, stream_images
from pas.curation.fingerprints import (
    crop_fractions,
    grey,
    read_fingerprints,
    thumbnails,
)
from pas.curation.neighbors import SearchConfig
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


class GreyEncoder:
    """A deterministic pixel embedding (centred 64x64 grey levels, unit length) that records what it was asked."""

    def __init__(self):
        self.calls = []

    def encode_images(self, images, total=None, desc="embed"):
        vectors = [grey(image).ravel() - grey(image).mean() for image in images]
        self.calls.append((desc, total, len(vectors)))
        out = np.array(vectors, np.float32).reshape(len(vectors), -1)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def write_raw_split(path, blobs):
    write_table(pa.table({"image": blobs, "label": [i % 2 for i in range(len(blobs))],
                          "label_name": ["ab"[i % 2] for i in range(len(blobs))]}), path)


@pytest.fixture(scope="module")
def planted_splits(tmp_path_factory):
    """toy/train = [S, unreadable, X, X, Y], toy/test = [T0, T1, S]; S is in both splits, X twice in train."""
    root = tmp_path_factory.mktemp("splits")
    s, x, y, t0, t1 = (make_image(300 + i) for i in range(5))
    write_raw_split(root / "toy" / "train.parquet", [png(s), b"not an image", png(x), png(x), png(y)])
    write_raw_split(root / "toy" / "test.parquet", [png(t0), png(t1), png(s)])
    return root, {"S": s, "X": x, "Y": y, "T0": t0, "T1": t1, "clean": make_image(399)}


@pytest.mark.parametrize("index", ["exact", "ivf"])
def test_each_candidate_gets_the_first_set_its_strongest_signal_and_the_matched_position(planted_splits, caplog,
                                                                                          index):
    """Hash beats copy beats embedding; an earlier split wins; positions count the unreadable image (Y, the second
    image of the second batch of two, is at position 4); the hash match is the first position of that hash; per_set
    counts a candidate in every split it matches; the configured search is the one used."""
    root, im = planted_splits
    names = ["S", "X", "Y", "T1", "clean", "T0"]
    images = [im[k] for k in names]
    hashes = [pixel_hash(image) for image in images]
    hashes[2] = hashes[3] = ""                                   # Y and T1 without a pixel hash
    thumbs = thumbnails(np.stack([grey(image) for image in images]))[:, 0]    # (6, 144)
    thumbs[3] = 0                                                # T1 without a thumbnail: embedding only
    encoder = GreyEncoder()
    embeddings = encoder.encode_images(images)
    splits = eval_splits(root)
    assert [name for name, _ in splits] == ["toy/train", "toy/test"]
    limits = Thresholds(embedding=0.99, copy=0.97, max_crop=0.1, crop_steps=2)
    caplog.set_level(logging.INFO)
    dirty = decontaminate(embeddings, hashes, thumbs, splits, encoder, limits, SearchConfig(index=index, nlist=1),
                          batch=2)
    assert dirty.sets == ["toy/train", "toy/test"]
    assert dirty.set_index.tolist() == [0, 0, 0, 1, -1, 1]
    assert dirty.signal == ["hash", "hash", "copy", "embedding", "", "hash"]
    assert dirty.item.tolist() == [0, 2, 4, 1, -1, 0]
    assert dirty.mask.tolist() == [True, True, True, True, False, True]
    assert dirty.per_set == {"toy/train": 3, "toy/test": 3} and dirty.sizes == {"toy/train": 4, "toy/test": 3}
    assert encoder.calls[1:] == [("toy/train", 5, 4), ("toy/test", 3, 3)]
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "candidates too close" in m] == ["toy/train: 4 images; 3 candidates too close",
                                                                   "toy/test: 3 images; 3 candidates too close"]
    searches = [m.split(" by ")[-1] for m in messages if m.startswith("pairs >= ")]
    assert searches == [f"{index} search"] * 6                   # per split: 2 batches of crops, 1 embedding search
    evaluation = encoder.encode_images([im[k] for k in ("S", "X", "X", "Y", "T0", "T1", "S")])
    assert dirty.nearest.dtype == dirty.copy_score.dtype == np.float32
    nearest = (embeddings @ evaluation.T).max(axis=1)
    assert nearest[4] < 0.99
    crops = thumbnails(np.stack([grey(im[k]) for k in ("S", "X", "X", "Y", "T0", "T1", "S")]),
                       crop_fractions(0.1, 2)).reshape(-1, thumbs.shape[1])
    copy_score = (thumbs @ crops.T).max(axis=1)
    if index == "ivf":                                           # the best verified candidate, NaN where none
        assert np.allclose(dirty.nearest[[0, 1, 2, 3, 5]], nearest[[0, 1, 2, 3, 5]], atol=1e-5)
        assert np.allclose(dirty.copy_score[[0, 1, 2, 5]], copy_score[[0, 1, 2, 5]], atol=1e-5)
        return
    assert np.allclose(dirty.nearest, nearest, atol=1e-5)
    assert np.allclose(dirty.copy_score, copy_score, atol=1e-5) and dirty.copy_score[3] == 0


def test_without_the_copy_signal_no_copy_score_is_computed(planted_splits):
    root, im = planted_splits
    images = [im["Y"], im["clean"]]
    thumbs = thumbnails(np.stack([grey(image) for image in images]))[:, 0]
    encoder = GreyEncoder()
    dirty = decontaminate(encoder.encode_images(images), ["", ""], thumbs, eval_splits(root), encoder,
                          Thresholds(embedding=0.99, copy=0.0))
    assert dirty.signal == ["embedding", ""] and dirty.item.tolist() == [4, -1]
    assert np.isnan(dirty.copy_score).all() and np.isfinite(dirty.nearest).all()


def test_no_evaluation_set_leaves_every_candidate_clean(tmp_path):
    assert eval_splits(tmp_path / "missing") == [] and eval_splits(tmp_path) == []
    encoder = GreyEncoder()
    dirty = decontaminate(np.eye(3, dtype=np.float32), ["a", "b", ""], np.zeros((3, 144), np.float32), [], encoder,
                          Thresholds())
    assert dirty.sets == [] and dirty.set_index.tolist() == [-1, -1, -1] and dirty.item.tolist() == [-1, -1, -1]
    assert dirty.signal == ["", "", ""] and not dirty.mask.any() and dirty.per_set == {} and dirty.sizes == {}
    assert np.isnan(dirty.nearest).all() and np.isnan(dirty.copy_score).all() and encoder.calls == []
