"""Hostile inputs and a careless environment, kept from coming back: LLM servers on 127.0.0.1 that redirect,
trickle, flood or echo the key; hostile names; hostile pool files; a locked MLflow store."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import LocalServer, make_image, send

from pas.concepts.llm import LLMConfig, LLMError, OpenAIChat
from pas.core.config import ConfigError, build

SECRET = "sk-hostile-0123456789abcdef"


def Hostile(handle) -> LocalServer:  # noqa: N802 (reads as the server kind it makes)
    """An OpenAI-style server on 127.0.0.1/v1 answering every request with `handle`."""
    return LocalServer(handle, "/v1")


def auth(server: LocalServer) -> list[str | None]:
    """The Authorization header of every request the server got."""
    return [header for _, header in server.requests]


def client(url: str, **settings) -> OpenAIChat:
    return OpenAIChat(build(LLMConfig, {"backend": "openai", "model": "m", "base_url": url,
                                        "api_key_env": "PAS_HOSTILE_KEY", "retries": 0, "backoff_s": 0.0,
                                        **settings}, "concepts.llm"))


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("PAS_HOSTILE_KEY", SECRET)
    return SECRET


def test_a_redirect_to_another_origin_is_refused_and_the_key_stays_home(key):
    other = Hostile(lambda h: send(h, 200, b'{"choices": [{"message": {"content": "stolen"}}]}'))
    first = Hostile(lambda h: send(h, 302, b"", Location=other.url + "/chat/completions"))
    try:
        with pytest.raises(LLMError, match=r"redirected \(HTTP 302\).*redirects are not followed"):
            client(first.url).complete("hi", 0.0, 0)
        assert auth(first) == [f"Bearer {key}"] and auth(other) == []
    finally:
        first.close(), other.close()


def test_a_trickling_server_cannot_hold_a_request_past_its_deadline(key):
    def trickle(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(60):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.2)

    server = Hostile(trickle)
    try:
        started = time.monotonic()
        with pytest.raises(LLMError, match="no complete reply within the 1.5s deadline"):
            client(server.url, timeout_s=1.5).complete("hi", 0.0, 0)
        assert time.monotonic() - started < 6  # the trickle alone would take 12 s
    finally:
        server.close()


def test_a_flood_reply_is_refused_without_being_read_whole(key):
    flood = b"x" * 3_000_000
    server = Hostile(lambda h: send(h, 200, flood))
    try:
        with pytest.raises(LLMError, match=r"more than concepts\.llm\.max_reply_mb=1\.0 MB"):
            client(server.url, max_reply_mb=1.0).complete("hi", 0.0, 0)
    finally:
        server.close()


def test_a_401_that_echoes_the_header_never_prints_the_key(key, caplog):
    server = Hostile(lambda h: send(h, 401, f'{{"error": "bad key {h.headers["Authorization"]}"}}'.encode()))
    try:
        with pytest.raises(LLMError, match=r"HTTP 401: .*bad key Bearer \*\*\*") as err:
            client(server.url).complete("hi", 0.0, 0)
        assert key not in str(err.value) and key not in caplog.text
    finally:
        server.close()


def test_a_reset_connection_is_reported_without_the_key(key):
    def reset(handler):
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        handler.connection.close()

    server = Hostile(reset)
    try:
        with pytest.raises(LLMError, match="1 attempts: connection failed") as err:
            client(server.url).complete("hi", 0.0, 0)
        assert key not in str(err.value)
    finally:
        server.close()


# ---- hostile names: one sanitiser for MLflow keys and file names --------------------------------------------

HOSTILE_NAMES = ["brewer's blackbird", "chuck-will's-widow", "a/b", "..", "x" * 300, "evil\u202ename", "tab\there",
                 "(parenthesised)", "café au lait"]


def test_safe_name_is_stable_collision_free_capped_and_keeps_plain_names():
    from pas.core.names import safe_name

    names = [safe_name(n) for n in HOSTILE_NAMES + ["a_b", "a b", "a-b", " a b"]]
    assert len(set(names)) == len(names)  # "a/b", "a_b" and "a b" stay apart
    assert all(re.fullmatch(r"[A-Za-z0-9 _.-]{1,64}", n) and not n.startswith((".", " ")) and ".." not in n
               for n in names)
    assert safe_name("cat") == "cat" and safe_name("snow leopard") == "snow leopard"
    assert safe_name("a/b") == safe_name("a/b") != safe_name("a_b")


def test_metrics_keyed_by_hostile_concept_names_land_in_mlflow(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pas.core.names import safe_name
    from pas.core.tracking import stage_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with stage_run("dedup", {"size": 300}, "pas-birds") as run:
        run.log_metrics({"per_concept": {name: i for i, name in enumerate(HOSTILE_NAMES)}})
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("pas-birds").experiment_id],
                                  filter_string="tags.`pas.stage` = 'dedup'")
    assert found.info.status == "FINISHED"
    assert found.data.metrics == {f"per_concept.{safe_name(n)}": float(i) for i, n in enumerate(HOSTILE_NAMES)}


def test_llm_names_with_separators_or_bidi_become_no_concept_and_say_why():
    from pas.concepts.merge import unsafe_name

    assert unsafe_name("fish/chips") and unsafe_name("..") and unsafe_name("evil\u202ename")
    assert unsafe_name("new\nline") and unsafe_name("a\\b")
    assert unsafe_name("brewer's blackbird") is None and unsafe_name("st. john's wort") is None


def test_a_domain_spec_with_a_path_separator_in_a_name_is_refused_by_name(tmp_path):
    from pas.concepts.build import ConceptsConfig, build_concepts

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: dishes\ndescription: d\npositive_prompts: [food]\nnegative_prompts: [car]\n"
                    "templates: ['a photo of {concept}']\ncontexts: [x]\nconcepts: [pho, fish/chips]\n")
    with pytest.raises(ConfigError, match=r"concepts\[1\] name 'fish/chips' contains a path separator"):
        build_concepts("dishes", build(ConceptsConfig, {"spec": str(spec)}, "concepts"), 0)


def test_export_keeps_classes_apart_and_survives_a_300_character_name(tmp_path):
    from pas.core.shards import encode_jpeg, write_shard, write_table
    from pas.curation.export import export

    concepts = ["a/b", "a_b", "x" * 300]
    records = [(f"k{i}", encode_jpeg(make_image(i)), {}) for i in range(3)]
    write_shard(tmp_path / "c-000000.tar", records)
    rows = [{"key": f"k{i}", "shard": str(tmp_path / "c-000000.tar"), "source": "generated", "concept": c}
            for i, c in enumerate(concepts)]
    write_table(rows, tmp_path / "curated.parquet")
    assert export(tmp_path / "curated.parquet", tmp_path / "out") == {"parquet": 3, "imagefolder": 3, "webdataset": 3}
    folders = sorted(p for p in (tmp_path / "out" / "imagefolder").iterdir() if p.is_dir())
    assert len(folders) == 3 and all(len(p.name) <= 64 and len(list(p.iterdir())) == 1 for p in folders)


# ---- hostile pools -------------------------------------------------------------------------------------------

def test_hostile_pool_files_are_skipped_with_a_reason_and_nothing_outside_is_read(tmp_path):
    from pas.sources.pool_sources import iter_pool

    pool = tmp_path / "pool"
    pool.mkdir()
    good = io.BytesIO()
    make_image(1).save(good, format="PNG")
    (pool / "ok.png").write_bytes(good.getvalue())
    (pool / "fake.parquet").write_bytes(b"this is not parquet")
    pq.write_table(pa.table({"image": [1, 2]}), pool / "ints.parquet")
    (pool / os.fsdecode(b"caf\xe9.png")).write_bytes(good.getvalue())
    (tmp_path / "secret.png").write_bytes(good.getvalue())
    (pool / "files.lst").write_bytes(b"ok.png\n../secret.png\n/etc/hostname\n\xff\xfe.png\n")
    items = list(iter_pool(pool))
    reasons = {item.id: item.reason for item in items}
    assert reasons["fake.parquet#0"] == "unreadable_container"
    assert reasons["ints.parquet#0"] == reasons["ints.parquet#1"] == "not_image_bytes"
    assert reasons["caf\\xe9.png"] == "bad_file_name"
    assert reasons["../secret.png"] == reasons["/etc/hostname"] == "outside_pool"
    assert reasons["files.lst:4"] == "bad_file_name"
    assert [i.reason for i in items if i.id == "ok.png"] == ["", "duplicate_path"]
    assert all(item.data is None for item in items if item.reason)
    pq.write_table(pa.Table.from_pylist([{"id": i.id, "reason": i.reason} for i in items]), tmp_path / "ids.parquet")


def test_a_replaced_image_of_the_same_size_is_embedded_again(tmp_path, tiny_models):
    from pas.models.clip import ClipEncoder
    from pas.sources.pool_index import PoolIndexConfig, chunk_paths, embed_pool

    pool = tmp_path / "pool"
    pool.mkdir()
    first, second = make_image(1), make_image(2)
    for name, image in (("a.bmp", first), ("b.bmp", second)):
        image.save(pool / name)  # BMP: every image of one size has the same byte length
    encoder = ClipEncoder(tiny_models["clip"])
    cfg = PoolIndexConfig(source=str(pool), chunk_size=8)
    embed_pool(pool, lambda: encoder, cfg, tmp_path / "chunks", "sha")
    before = np.load(chunk_paths(tmp_path / "chunks", 0)[1])
    second.save(pool / "a.bmp")  # same size, other content
    assert (pool / "a.bmp").stat().st_size == (pool / "b.bmp").stat().st_size
    embed_pool(pool, lambda: encoder, cfg, tmp_path / "chunks", "sha")
    after = np.load(chunk_paths(tmp_path / "chunks", 0)[1])
    assert not np.array_equal(before[0], after[0]) and np.array_equal(after[0], after[1])


@pytest.mark.parametrize("settings, message", [
    ({"memory_budget_mb": -1}, r"pool_index\.memory_budget_mb=-1 is not allowed"),
    ({"batch_size": 0}, r"pool_index\.batch_size=0 is not allowed"),
])
def test_bad_pool_index_settings_are_refused(settings, message):
    from pas.sources.pool_index import PoolIndexConfig

    with pytest.raises(ConfigError, match=message):
        build(PoolIndexConfig, settings, "pool_index")


def test_an_unmet_target_recall_is_reported(caplog):
    from pas.sources.pool_index import PoolIndexConfig, build_index

    rng = np.random.default_rng(0)
    data = rng.normal(size=(4000, 32)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    cfg = PoolIndexConfig(index="ivf_pq", target_recall=0.999)
    with caplog.at_level(logging.WARNING):
        _, description = build_index(lambda: iter([data]), len(data), 32, cfg)
    assert description["target_recall"] == 0.999 and description["recall_met"] is False
    assert "below pool_index.target_recall" in caplog.text


# ---- a busy MLflow store, a single-class set, leftovers of killed runs, orphaned stages ----------------------

def test_a_locked_mlflow_store_never_fails_a_stage(tmp_path, monkeypatch, caplog):
    from pas.core.tracking import stage_run

    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("PAS_TRACKING_PATIENCE", "1")
    with stage_run("warmup", {}, "pas-lock"):
        pass  # the schema exists
    holder = sqlite3.connect(db, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")  # another process (a UI, a second experiment) holds the write lock
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING), stage_run("dedup", {"size": 300}, "pas-lock") as run:
            run.log_metrics({"curated": 300})
            run.log_artifact(__file__)
            (tmp_path / "output").write_text("complete")
        assert (tmp_path / "output").read_text() == "complete"
        assert "going on without tracking" in caplog.text and time.monotonic() - started < 60
        assert caplog.text.count("MLflow tracking failed") == 1  # one warning, then tracking is off
    finally:
        holder.rollback()
        holder.close()


def test_a_single_class_dataset_is_skipped_not_scored(tmp_path):
    from pas.transfer.config import FinetuneConfig, InitSpec
    from pas.transfer.finetune import run_finetune

    folder = tmp_path / "one"
    folder.mkdir()
    for split, n in (("train", 8), ("test", 4)):
        images = []
        for i in range(n):
            buffer = io.BytesIO()
            make_image(i, 32).save(buffer, format="PNG")
            images.append(buffer.getvalue())
        pq.write_table(pa.table({"image": images, "label": [3] * n, "label_name": ["cat"] * n}),
                       folder / f"{split}.parquet")
    cfg = FinetuneConfig(image_size=32, protocols=("knn",), inits=(InitSpec("random", "resnet18", "random"),))
    metrics = run_finetune({"one": folder}, "resnet18", None, cfg, tmp_path / "out", 0)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert metrics["one"]["skipped"] == 1 and "classification needs 2 or more" in index["datasets"]["one"]["skipped"]


def test_temporaries_of_a_killed_process_are_removed_by_the_next_write(tmp_path):
    from pas.core.shards import atomic_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".finetune.tmp-{int(dead.stdout)}"
    (stale / "part").mkdir(parents=True)
    mine = tmp_path / f".finetune.tmp-{os.getppid()}"  # a live process's temporary is left alone
    mine.mkdir()
    with atomic_dir(tmp_path / "finetune") as out:
        (out / "index.json").write_text("{}")
    assert not stale.exists() and mine.exists() and (tmp_path / "finetune" / "index.json").exists()


def test_a_stage_whose_dvc_is_killed_stops_instead_of_writing_later(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(
        "import os, sys, time, psutil\n"
        "from pas.core.runtime import stop_when_orphaned\n"
        "stop_when_orphaned(psutil.Process(os.getppid()), interval=0.1)\n"
        "time.sleep(3)\n"
        f"open({str(tmp_path / 'late')!r}, 'w').write('overwrote')\n")
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               f"subprocess.Popen([sys.executable, {str(script)!r}]); time.sleep(30)"])
    time.sleep(1.5)
    parent.kill()
    parent.wait()
    time.sleep(3.5)
    assert not (tmp_path / "late").exists()
