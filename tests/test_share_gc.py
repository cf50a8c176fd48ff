"""`pas share --gc`: deletes exactly the work-store entries no current output was made from and older than
--keep-days, never a referenced one; --dry-run deletes nothing and names the same entries and bytes."""
import json
import os
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import REPO, make_image
from pas.core.share import gc, main, referenced_digests
from pas.core.shards import encode_jpeg, write_shard
from pas.core.work_store import from_url

DAY = 86_400


def workspace(root):
    """Outputs made from images a1, a2, chunk c1 and URL http://x/1, where the repository's dvc.yaml puts them."""
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    write_shard(root / "data/generated/generated-000000.tar",
                [(f"k{i}", encode_jpeg(make_image(i)), {"fingerprint": f"a{i}"}) for i in (1, 2)])
    chunk = root / "data/pool_index/chunks/chunk-000000.parquet"
    chunk.parent.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["x"]}).replace_schema_metadata({"pas.fingerprint": "c1"}), chunk)
    write_shard(root / "data/retrieved/retrieved-000000.tar",
                [("r0", encode_jpeg(make_image(9)), {"url": "http://x/1"})])


def fill(store, now):
    """Entries: referenced and not, old (40 days) and new."""
    import hashlib

    url = hashlib.sha256(b"http://x/1").hexdigest()[:32]
    ages = {("images", "a1"): 40, ("images", "a2"): 0, ("images", "b1"): 40, ("images", "b2"): 1,
            ("pool-chunks", "c1"): 40, ("pool-chunks", "c2"): 40, ("downloads", url): 40, ("downloads", "d2"): 40}
    for (kind, digest), days in ages.items():
        store.put(kind, digest, b"x" * 10)
        os.utime(store.path(kind, digest), (now - days * DAY, now - days * DAY))
    return url


def test_gc_deletes_exactly_the_old_unreferenced_entries(tmp_path):
    workspace(tmp_path)
    store, now = from_url(str(tmp_path / "store")), time.time()
    url = fill(store, now)
    refs = referenced_digests(tmp_path)
    assert refs == {"images": {"a1", "a2"}, "pool-chunks": {"c1"}, "downloads": {url}}
    dry = gc(store, refs, 30, dry_run=True, now=now)
    assert len(dry["paths"]) == 3 and all(os.path.exists(p) for p in dry["paths"])
    done = gc(store, refs, 30, now=now)
    assert done["paths"] == dry["paths"] and done["bytes"] == dry["bytes"] > 0
    left = {kind: store.listing(kind) for kind in ("images", "pool-chunks", "downloads")}
    assert left == {"images": {"a1", "a2", "b2"}, "pool-chunks": {"c1"}, "downloads": {url}}
    gc(store, refs, 0, now=now)   # keep-days 0: every unreferenced entry, however new; never a referenced one
    assert store.listing("images") == {"a1", "a2"}


def test_the_command_prints_what_would_go_and_the_bytes(tmp_path, monkeypatch, capsys):
    workspace(tmp_path)
    store = from_url(str(tmp_path / "store"))
    fill(store, time.time())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAS_WORK_STORE", str(tmp_path / "store"))
    assert main(["--gc", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    doomed = [line.removeprefix("would delete ") for line in lines[:-1]]
    assert len(doomed) == 3 and {os.path.basename(p) for p in doomed} == {"b1", "c2", "d2"}
    summary = json.loads(lines[-1])
    assert summary["dry_run"] and summary["bytes"] == sum(os.path.getsize(p) for p in doomed)
    assert store.listing("images") == {"a1", "a2", "b1", "b2"}
