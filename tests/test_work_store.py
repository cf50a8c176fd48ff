"""The team's work store (pas.core.work_store): entries round-trip on a local folder and on S3 (moto's server, found
through a DVC remote), a killed write leaves nothing visible, a corrupt or foreign entry is rejected and the work done
again; generate, retrieve's downloads and pool_index's chunks restore what the store holds and save what they made."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import make_image
from pas.core.work_store import LIST_ABOVE, WorkStore, entry_bytes, from_url, pack, team_store, unpack


def test_entries_round_trip_and_many_are_answered_by_one_listing(tmp_path, monkeypatch):
    store = from_url(str(tmp_path / "store"))
    payloads = {f"{i:04x}" * 4: os.urandom(50 + i) for i in range(LIST_ABOVE + 6)}
    store.put_many("images", payloads)
    assert store.fetch("images", ["0000" * 4, "ffff" * 4]) == {"0000" * 4: payloads["0000" * 4]}
    assert store.contains("downloads", ["0000" * 4]) == set() and store.listing("nothing") == set()
    calls = []
    monkeypatch.setattr(store.fs, "exists", lambda paths, **kw: calls.append(len(paths)) or [True] * len(paths))
    assert store.fetch("images", list(payloads) + ["ffff" * 4]) == payloads   # listed once, not checked one by one
    assert calls == []
    assert unpack(pack([b"", b"ab", b"c"])) == [b"", b"ab", b"c"]


def test_a_corrupt_or_foreign_entry_is_rejected(tmp_path):
    store = from_url(str(tmp_path))
    store.put("images", "a" * 16, b"the image")
    for c in "bcde":
        Path(store.path("images", c * 16)).parent.mkdir(parents=True)
    Path(store.path("images", "b" * 16)).write_bytes(Path(store.path("images", "a" * 16)).read_bytes())  # foreign
    Path(store.path("images", "c" * 16)).write_bytes(entry_bytes("images", "c" * 16, b"payload")[:-3])   # truncated
    Path(store.path("images", "d" * 16)).write_bytes(entry_bytes("downloads", "d" * 16, b"payload"))  # other kind
    Path(store.path("images", "e" * 16)).write_bytes(b"not an entry")
    assert store.fetch("images", [c * 16 for c in "abcde"]) == {"a" * 16: b"the image"}
    assert store.counts["rejected"] == 4


KILLED_WRITER = """
import sys
from pas.core.work_store import from_url
from_url(sys.argv[1]).put("images", "f" * 16, b"x" * 300_000_000)
"""


def test_a_write_killed_midway_leaves_no_visible_entry(tmp_path):
    root = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root)])
    deadline = time.monotonic() + 60
    while not any(p.is_file() and p.stat().st_size > 0 for p in root.rglob("*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = from_url(str(root))
    assert any(root.rglob("*")), "the writer was killed before it wrote anything: the test proves nothing"
    assert store.contains("images", ["f" * 16]) == set() and store.listing("images") == set()
    assert store.fetch("images", ["f" * 16]) == {}
    store.put("images", "f" * 16, b"done")            # the work done again is saved whole
    assert store.fetch("images", ["f" * 16]) == {"f" * 16: b"done"}


@pytest.fixture(scope="module")
def s3_remote():
    """moto's S3 server on a free port with a bucket; yields its URL."""
    pytest.importorskip("dvc_s3", reason="the test extra installs dvc-s3")
    pytest.importorskip("moto.server", reason="the test extra installs moto[server]")
    from moto_s3 import s3_server as serve_s3

    with serve_s3("team") as url:
        yield url


def test_the_store_lives_beside_the_dvc_remote_on_s3(tmp_path, s3_remote, monkeypatch):
    import boto3

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PAS_WORK_STORE", raising=False)
    subprocess.run("dvc init -q --no-scm && dvc remote add -d shared s3://team/dvcstore && "
                   f"dvc remote modify shared endpointurl {s3_remote}", shell=True, cwd=tmp_path, check=True)
    store = team_store(tmp_path)
    assert isinstance(store, WorkStore) and store.describe() == "s3://team/dvcstore/pas-work"
    payloads = {f"{i:02x}" * 8: os.urandom(100) for i in range(LIST_ABOVE + 2)}
    store.put_many("pool-chunks", payloads)
    assert store.fetch("pool-chunks", list(payloads)[:3]) == {d: payloads[d] for d in list(payloads)[:3]}
    assert store.fetch("pool-chunks", list(payloads)) == payloads
    s3 = boto3.client("s3", endpoint_url=s3_remote)
    digest = next(iter(payloads))
    s3.put_object(Bucket="team", Key=f"dvcstore/pas-work/pool-chunks/{digest[:2]}/{digest}", Body=b"garbage")
    assert digest not in store.fetch("pool-chunks", [digest])
    (tmp_path / ".dvc" / "config").write_text("[core]\n    no_scm = True\n")
    assert team_store(tmp_path) is None                                # no remote: no store
    monkeypatch.setenv("PAS_WORK_STORE", str(tmp_path / "mine"))
    assert team_store(tmp_path).describe() == str(tmp_path / "mine")   # the machine setting wins


def test_generate_restores_the_images_the_store_holds_and_renders_only_the_rest(tiny_models, tmp_path):
    from pas.models.registry import read_entry
    from pas.sources.generate import GenerateConfig, generate, plan_jobs

    from test_generate import CONCEPTS

    cfg, model = GenerateConfig(steps=1, batch_size=4, shard_size=3), read_entry(tiny_models["generator"])
    store = from_url(str(tmp_path / "store"))
    alice = generate(tiny_models["generator"], model, plan_jobs(CONCEPTS, 4, 0), cfg, tmp_path / "alice", store)
    assert alice["images_rendered"] == 4 and alice["images_restored"] == 0 and len(store.listing("images")) == 4
    bob = generate(tiny_models["generator"], model, plan_jobs(CONCEPTS, 4, 0), cfg, tmp_path / "bob", store)
    assert bob["images_rendered"] == 0 and bob["images_restored"] == 4
    for shard in sorted((tmp_path / "alice").iterdir()):          # shards, indexes and manifest byte for byte
        assert (tmp_path / "bob" / shard.name).read_bytes() == shard.read_bytes()
    victim = sorted(store.listing("images"))[0]
    Path(store.path("images", victim)).write_bytes(b"corrupt")
    carol = generate(tiny_models["generator"], model, plan_jobs(CONCEPTS, 6, 0), cfg, tmp_path / "carol", store)
    assert carol["images_rendered"] == 2 + 1 and carol["images_restored"] == 3   # the 2 new ones and the corrupt one
    assert store.fetch("images", [victim]) != {}                                  # rewritten whole
    offline = generate(tiny_models["generator"], model, plan_jobs(CONCEPTS, 4, 0), cfg, tmp_path / "offline", None)
    for shard in sorted((tmp_path / "alice").iterdir()):          # no store: the same bytes
        assert (tmp_path / "offline" / shard.name).read_bytes() == shard.read_bytes()
    assert offline["images_restored"] == 0


def test_pool_chunks_are_embedded_once_for_the_team(tiny_models, tmp_path):
    from pas.models.clip import ClipEncoder
    from pas.sources.pool_index import PoolIndexConfig, embed_pool

    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(10):
        make_image(i, 32).save(pool / f"img{i:02d}.png")
    encoder, calls = ClipEncoder(tiny_models["clip"]), []
    original = encoder.encode_pixels
    encoder.encode_pixels = lambda pixels: calls.append(len(pixels)) or original(pixels)
    cfg, store = PoolIndexConfig(source=str(pool), chunk_size=4), from_url(str(tmp_path / "store"))
    first, second = Counter(), Counter()
    assert embed_pool(pool, lambda: encoder, cfg, tmp_path / "alice", "sha", store=store, counts=first) == 3
    assert first["embedded"] == 3 and calls
    calls.clear()
    assert embed_pool(pool, lambda: encoder, cfg, tmp_path / "bob", "sha", store=store, counts=second) == 3
    assert calls == [] and second["restored"] == 3 and second["embedded"] == 0
    for path in sorted((tmp_path / "alice").iterdir()):
        assert (tmp_path / "bob" / path.name).read_bytes() == path.read_bytes()


def test_downloads_are_restored_from_the_store_without_asking_the_web(tmp_path):
    from pas.sources.download import DownloadSettings, Fetched, download

    from test_web_pool import ImageServer, fetched

    server = ImageServer()
    try:
        hits = [{"pool_row": i, "url": f"{server.url}/img/{i}.png", "caption": ""} for i in range(6)]
        hits += [{"pool_row": 6, "url": f"{server.url}/missing/6", "caption": ""}]
        settings, store = DownloadSettings(timeout_s=2, threads=4, min_side=8, shard_size=4), from_url(
            str(tmp_path / "store"))
        alice = Fetched()
        download(hits, tmp_path / "alice", settings, alice, store)
        assert len(alice.images) == 6 and alice.urls_downloaded == 7 and len(fetched(server)) == 7
        server.requests.clear()
        bob = Fetched()
        download(hits, tmp_path / "bob", settings, bob, store)
        assert bob.images == alice.images and set(bob.errors) == {6}      # the 404 is remembered too
        assert fetched(server) == {} and bob.urls_downloaded == 0 and bob.metrics()["urls_restored"] == 7
        assert not (tmp_path / "bob").exists()
    finally:
        server.close()
