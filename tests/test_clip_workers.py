"""CLIP preprocessing off the main thread: embed decodes, computes stats and preprocesses candidates in DataLoader
workers, encode_images preprocesses on threads, retrieve's exemplars load in workers; the vectors are bit for bit
the ones the main-thread loop gave."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import make_image

from pas.core.shards import encode_jpeg, write_shard
from pas.core.iterate import batched
from pas.curation.embed import CandidateImages, embed_candidates, stream_images
from pas.models.clip import ClipEncoder
from pas.sources.retrieve import ExemplarImages


def _main_thread(encoder: ClipEncoder, images) -> np.ndarray:
    """The loop encode_images ran before: preprocess each batch in this thread, then the model."""
    out = [encoder.encode_pixels(torch.stack([encoder.preprocess(im.convert("RGB")) for im in batch]))
           for batch in batched(images, encoder.batch_size)]
    return np.concatenate(out)


@pytest.fixture
def rows(tmp_path):
    out = []
    for s in range(2):
        shard = tmp_path / f"c-{s:06d}.tar"
        records = [(f"k{s}{i}", encode_jpeg(make_image(50 * s + i, 40 + 8 * i)), {}) for i in range(5)]
        records.append((f"k{s}bad", b"not a jpeg", {}))
        write_shard(shard, records)
        out += [{"key": key, "shard": str(shard)} for key, _, _ in records]
    out.append({"key": "missing", "shard": str(tmp_path / "c-000001.tar")})
    return out


def test_embed_in_workers_gives_the_main_thread_vectors_and_stats(rows, tiny_models, tmp_path, monkeypatch):
    encoder = ClipEncoder(tiny_models["clip"], batch_size=4)
    known = {2: np.full(encoder.encode_texts(["x"]).shape[1], 0.5, np.float32), 7: None}
    known[7] = known[2] * 2
    stats_before: list = []
    fresh = (image for i, image in enumerate(stream_images(rows, stats_before)) if i not in known)
    before = _main_thread(encoder, fresh)
    pids = tmp_path / "pids"
    pids.mkdir()
    load = CandidateImages.__getitem__
    monkeypatch.setattr(CandidateImages, "__getitem__", lambda self, i: (pids / str(os.getpid())).touch() or
                        load(self, i))
    for workers in ("0", "2"):
        monkeypatch.setenv("PAS_NUM_WORKERS", workers)
        embeddings, stats = embed_candidates(rows, encoder, known)
        others = [i for i in range(len(rows)) if i not in known]
        assert np.array_equal(embeddings[others], before)                    # bit for bit
        assert np.array_equal(embeddings[2], known[2]) and np.array_equal(embeddings[7], known[7])
        assert stats == stats_before and sum(not s["decodable"] for s in stats) == 3
        seen = {int(p.name) for p in pids.iterdir()}
        assert (seen == {os.getpid()}) if workers == "0" else (seen and os.getpid() not in seen)
        for p in pids.iterdir():
            p.unlink()


def test_threaded_encode_images_and_exemplar_workers_match_the_main_thread(tiny_models, tmp_path):
    encoder = ClipEncoder(tiny_models["clip"], batch_size=3)
    images = [make_image(i, 30 + 9 * i) for i in range(7)]
    before = _main_thread(encoder, images)
    assert np.array_equal(encoder.encode_images(iter(images), workers=2), before)
    assert np.array_equal(encoder.encode_images(images, workers=0), before)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    vectors, infos = encoder.encode_source(ExemplarImages(paths), workers=2)
    assert np.array_equal(vectors, before) and infos == [None] * len(images)
