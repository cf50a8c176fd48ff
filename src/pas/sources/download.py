"""Download only the retrieval hits of a URL pool, with img2dataset into WebDataset shards, resumably.

Each round's URL list is content-addressed: `<cache>/<digest>.parquet` and its img2dataset output folder
`<cache>/<digest>/`. Run again after a kill with the same hits, img2dataset's incremental mode keeps the shards
it finished and fetches only the rest. Per-sample status (success, or the error: 404, timeout, not an image, too
small) is read back from img2dataset's own parquet files.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pas.core.shards import atomic_path
from pas.core.work_store import WorkStore, pack, unpack

log = logging.getLogger(__name__)

DOWNLOADS = "downloads"   # the work store's kind of downloaded hits, by URL digest
PERMANENT = ("not_found", "not_an_image")   # failures saved to the work store; others (timeouts) are tried again


@dataclass(frozen=True)
class DownloadSettings:
    """How hits are fetched (from params.retrieve)."""

    timeout_s: int = 10
    threads: int = 16
    min_side: int = 16
    shard_size: int = 1000


@dataclass
class Fetched:
    """What the downloads gave so far: pool row -> image bytes, pool row -> error, and counts."""

    images: dict[int, bytes] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    rounds: int = 0
    seconds: float = 0.0
    urls_downloaded: int = 0   # URLs asked of the web (img2dataset)
    urls_restored: int = 0     # URLs answered by the team's work store

    def metrics(self) -> dict[str, Any]:
        """Requested, downloaded, failed, success rate, failures by reason, rounds."""
        tried = len(self.images) + len(self.errors)
        reasons = Counter(_reason(e) for e in self.errors.values())
        return {"requested": tried, "downloaded": len(self.images), "failed": len(self.errors),
                "success_rate": len(self.images) / tried if tried else 0.0, "rounds": self.rounds,
                "failures": dict(sorted(reasons.items())), "urls_downloaded": self.urls_downloaded,
                "urls_restored": self.urls_restored,
                "images_per_second": len(self.images) / self.seconds if self.seconds else 0.0}


def _reason(error: str) -> str:
    text = error.lower()
    for needle, reason in (("404", "not_found"), ("timed out", "timeout"), ("timeout", "timeout"),
                           ("image decoding", "not_an_image"), ("cannot identify", "not_an_image"),
                           ("too small", "too_small"), ("image size", "too_small")):
        if needle in text:
            return reason
    return "other"


def url_digest(url: str) -> str:
    """A downloaded hit's address in the work store: the sha256 of its URL."""
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def _restore(store: WorkStore, todo: list[dict[str, Any]], fetched: Fetched) -> list[dict[str, Any]]:
    """Answer the hits the work store holds (an image, or a permanent failure); return the others."""
    found = store.fetch(DOWNLOADS, [url_digest(h["url"]) for h in todo])
    rest = []
    for hit in todo:
        payload = found.get(url_digest(hit["url"]))
        if payload is None:
            rest.append(hit)
            continue
        error, image = unpack(payload)
        if error:
            fetched.errors[hit["pool_row"]] = error.decode()
        else:
            fetched.images[hit["pool_row"]] = image
        fetched.urls_restored += 1
    return rest


def _save(store: WorkStore, hits: list[dict[str, Any]], fetched: Fetched) -> None:
    """Save the images and permanent failures of `hits` (just downloaded) to the work store."""
    entries = {}
    for hit in hits:
        row = hit["pool_row"]
        if row in fetched.images:
            entries[url_digest(hit["url"])] = pack([b"", fetched.images[row]])
        elif row in fetched.errors and _reason(fetched.errors[row]) in PERMANENT:
            entries[url_digest(hit["url"])] = pack([fetched.errors[row].encode(), b""])
    store.put_many(DOWNLOADS, entries)


def download(hits: list[dict[str, Any]], cache: Path, settings: DownloadSettings, fetched: Fetched,
             store: WorkStore | None = None) -> None:
    """Fetch the hits ({pool_row, url, caption}) not fetched yet; record each image or error in `fetched`.

    A hit the team's work store (`store`) holds is taken from it; one downloaded here is saved there."""
    todo = [h for h in hits if h["pool_row"] not in fetched.images and h["pool_row"] not in fetched.errors]
    if todo and store is not None:
        todo = _restore(store, todo, fetched)
    if not todo:
        return
    table = pa.table({"url": [h["url"] for h in todo], "caption": [h.get("caption") or "" for h in todo],
                      "pool_row": pa.array([h["pool_row"] for h in todo], pa.int64())})
    digest = hashlib.sha256("\n".join(table.column("url").to_pylist()).encode()).hexdigest()[:16]
    url_list, folder = cache / f"{digest}.parquet", cache / digest
    if not url_list.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_path(url_list) as tmp:
            pq.write_table(table, tmp)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network call on import
    from img2dataset import download as img2dataset_download

    log.info("downloading %d hits (round %d) into %s", len(todo), fetched.rounds + 1, folder)
    started = time.perf_counter()
    img2dataset_download(
        url_list=str(url_list), input_format="parquet", url_col="url", caption_col="caption",
        save_additional_columns=["pool_row"], output_folder=str(folder), output_format="webdataset",
        processes_count=1, thread_count=settings.threads, timeout=settings.timeout_s, resize_mode="no",
        min_image_size=settings.min_side, number_sample_per_shard=settings.shard_size, enable_wandb=False,
        distributor="multiprocessing", incremental_mode="incremental", retries=0)
    fetched.seconds += time.perf_counter() - started
    fetched.rounds += 1
    fetched.urls_downloaded += len(todo)
    _read_results(folder, fetched)
    if store is not None:
        _save(store, todo, fetched)


def _read_results(folder: Path, fetched: Fetched) -> None:
    for status_file in sorted(folder.glob("*.parquet")):
        rows = pq.read_table(status_file, columns=["key", "status", "error_message", "pool_row"]).to_pylist()
        shard = status_file.with_suffix(".tar")
        members: dict[str, bytes] = {}
        if shard.exists():
            with tarfile.open(shard) as tar:
                members = {m.name.partition(".")[0]: tar.extractfile(m).read() for m in tar
                           if m.isfile() and m.name.endswith(".jpg")}
        for row in rows:
            if row["status"] == "success" and row["key"] in members:
                fetched.images[row["pool_row"]] = members[row["key"]]
            else:
                fetched.errors[row["pool_row"]] = row["error_message"] or row["status"]
