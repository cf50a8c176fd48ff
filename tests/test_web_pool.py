"""A web pool built in the test: images served by a stdlib HTTP server on 127.0.0.1, metadata with their URLs
(and URLs that 404, time out or are not images), embeddings from the tiny CLIP. Retrieval downloads only the
chosen hits through img2dataset, replaces the failures, and a killed download resumes shard by shard."""
from __future__ import annotations

import io
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import LocalServer, make_image, send
from pas.models.clip import ClipEncoder, concept_queries
from pas.sources.download import DownloadSettings, Fetched, download
from pas.sources.pool_index import PoolIndexConfig, index_pool, load_index
from pas.sources.retrieve import PoolFiles, RetrieveConfig, retrieve

GOOD, BAD = 60, 18  # BAD rows repeat the embeddings of good rows 0..17, so they are among the hits


def serve_images(handler) -> None:
    """/img/N.png: an image; /missing/N: 404; /slow/N: answers after 3 s; /text/N: not an image."""
    kind, _, number = handler.path.strip("/").partition("/")
    if kind == "img":
        buffer = io.BytesIO()
        make_image(int(number.split(".")[0]), 32).save(buffer, format="PNG")
        send(handler, 200, buffer.getvalue(), Content_Type="image/png")
    elif kind == "slow":
        time.sleep(3)
        send(handler, 200, b"", Content_Type="image/png")
    elif kind == "text":
        send(handler, 200, b"hello, not an image", Content_Type="text/plain")
    else:
        send(handler, 404, b"not found")


def ImageServer() -> LocalServer:  # noqa: N802 (reads as the server kind it makes)
    """A local server of images and failures (serve_images)."""
    return LocalServer(serve_images)


def fetched(server: LocalServer) -> Counter:
    """How many times each path was requested."""
    return Counter(path for path, _ in server.requests)


@pytest.fixture
def server():
    srv = ImageServer()
    yield srv
    srv.close()


def web_pool(root, server, clip_dir) -> None:
    """img_emb/ + metadata/ with URLs only (no local copies), embedding_model.txt = tiny://clip."""
    vectors = ClipEncoder(clip_dir).encode_images(make_image(i, 32) for i in range(GOOD)).astype(np.float16)
    bad_kinds = ["missing", "slow", "text"]
    urls = [f"{server.url}/img/{i}.png" for i in range(GOOD)]
    urls += [f"{server.url}/{bad_kinds[i % 3]}/{i}" for i in range(BAD)]
    vectors = np.concatenate([vectors, vectors[:BAD]])
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    np.save(root / "img_emb" / "img_emb_0.npy", vectors)
    pq.write_table(pa.table({"url": urls, "caption": [f"caption {i}" for i in range(len(urls))],
                             "key": [f"k{i:05d}" for i in range(len(urls))]}), root / "metadata" / "metadata_0.parquet")
    (root / "embedding_model.txt").write_text("tiny://clip")


def test_only_the_hits_are_downloaded_failures_are_replaced_and_the_quota_is_met(tmp_path, server, tiny_models):
    web_pool(tmp_path / "pool", server, tiny_models["clip"])
    index_pool(PoolIndexConfig(source=str(tmp_path / "pool")), tiny_models["clip"], tmp_path / "index", 0)
    files = PoolFiles.read(tmp_path / "index")
    assert files.urls is not None and len(files.ids) == GOOD + BAD
    concepts = [{"name": n, "prompts": [f"a photo of a {n}"]} for n in ("cat", "dog")]
    queries = concept_queries(ClipEncoder(tiny_models["clip"]), concepts)
    cfg = RetrieveConfig(download_timeout_s=1, download_threads=8, download_min_side=8, shard_size=16)
    rows, metrics = retrieve(load_index(tmp_path / "index"), queries, concepts, files, tmp_path / "pool", 24, cfg,
                             tmp_path / "out", downloads=tmp_path / "downloads")
    assert metrics["images"] == 24 and Counter(r["concept"] for r in rows) == {"cat": 12, "dog": 12}
    assert all("/img/" in r["url"] and r["caption"].startswith("caption ") for r in rows)   # kept through to the rows
    downloads = metrics["downloads"]
    assert downloads["failed"] >= 1 and downloads["downloaded"] >= 24
    assert set(downloads["failures"]) <= {"not_found", "timeout", "not_an_image", "other"}
    counts = fetched(server)
    assert len([p for p in counts if p.startswith("/img/")]) <= 24 * 1.2 + BAD + 1   # only the hits, not the pool
    assert max(counts.values()) == 1                                                 # no URL fetched twice


def test_a_killed_download_resumes_without_fetching_finished_shards_again(tmp_path, server):
    hits = [{"pool_row": i, "url": f"{server.url}/img/{i}.png", "caption": ""} for i in range(12)]
    settings = DownloadSettings(timeout_s=2, threads=4, min_side=8, shard_size=4)
    first = Fetched()
    download(hits, tmp_path, settings, first)
    assert len(first.images) == 12 and len(fetched(server)) == 12
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    for leftover in folder.glob("00001*"):  # as if killed while shard 1 was being written
        leftover.unlink()
    server.requests.clear()
    again = Fetched()
    download(hits, tmp_path, settings, again)
    assert len(again.images) == 12 and again.images == first.images
    assert sorted(fetched(server)) == sorted(f"/img/{i}.png" for i in range(4, 8))   # shard 1's four URLs only
