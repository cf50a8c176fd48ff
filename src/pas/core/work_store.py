"""The team's work store: finished work by content address, so no one renders, downloads or embeds it twice.

    <store>/<kind>/<digest[:2]>/<digest>      kind: images (job digest), downloads (URL digest), pool-chunks

The store lives beside the team's DVC remote (`<remote>/pas-work`, same URL and credentials, through DVC's own
filesystem layer: local, S3, GCS, Azure, SSH ...) or at the URL in PAS_WORK_STORE (a machine setting, not a param).
Without either there is no store and nothing changes. Stages write finished work straight to it (write-through):
the stage is the only process that knows which entries it made, and a colleague's run finds them as soon as they
exist, with or without `pas share`. An entry is one object: a header naming its kind, digest and the payload's
sha256, then the payload; it is written whole (one PUT on an object store, a temporary name then a rename elsewhere),
and checked on read, so a half-written, corrupt or foreign entry is never used: the work is done again and the entry
rewritten. Lookups are batched: many digests are answered by one listing of the kind's folder, few by parallel
existence checks.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV = "PAS_WORK_STORE"
PREFIX = "pas-work"
MAGIC = b"PASWORK1\n"
TEAM = "team"          # a stage's `store` argument: the team's store found from the working directory
LIST_ABOVE = 64        # more digests than this are answered by one listing of the kind's folder
ATOMIC_PUT = {"s3", "gs", "gcs", "azure", "az", "abfs", "oss"}   # one PUT is all-or-nothing on these


def entry_bytes(kind: str, digest: str, payload: bytes) -> bytes:
    """An entry as stored: MAGIC, a JSON header line (kind, digest, payload sha256 and size), the payload."""
    header = {"kind": kind, "digest": digest, "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload


def parse_entry(kind: str, digest: str, data: bytes) -> bytes | None:
    """The payload of an entry read back, or None when it is not a whole, matching entry of (kind, digest)."""
    if not data.startswith(MAGIC):
        return None
    line, sep, payload = data[len(MAGIC):].partition(b"\n")
    try:
        header = json.loads(line) if sep else {}
    except ValueError:
        return None
    if header.get("kind") != kind or header.get("digest") != digest or header.get("size") != len(payload):
        return None
    return payload if hashlib.sha256(payload).hexdigest() == header.get("sha256") else None


def pack(parts: Iterable[bytes]) -> bytes:
    """Several byte strings as one payload (each preceded by its 8-byte length)."""
    return b"".join(struct.pack(">Q", len(part)) + part for part in parts)


def unpack(payload: bytes) -> list[bytes]:
    """The byte strings `pack` joined."""
    parts, at = [], 0
    while at < len(payload):
        (size,) = struct.unpack_from(">Q", payload, at)
        parts.append(payload[at + 8 : at + 8 + size])
        at += 8 + size
    return parts


@dataclass
class WorkStore:
    """A store of finished work on a DVC filesystem (dvc_objects FileSystem) under `root`."""

    fs: Any
    root: str
    counts: dict[str, int] = field(default_factory=dict)   # entries rejected (corrupt or foreign), for the log

    def path(self, kind: str, digest: str) -> str:
        """Where the entry of (kind, digest) lives."""
        return self.fs.join(self.root, kind, digest[:2], digest)

    def listing(self, kind: str) -> set[str]:
        """Every digest the store holds for `kind` (one recursive listing)."""
        folder = self.fs.join(self.root, kind)
        try:
            found = list(self.fs.find(folder))
        except FileNotFoundError:
            return set()
        names = (self.fs.name(path) for path in found)
        return {name for name in names if not name.startswith(".") and ".tmp-" not in name}

    def contains(self, kind: str, digests: Iterable[str]) -> set[str]:
        """The digests of `digests` that have an entry: one listing for many, parallel existence checks for few."""
        wanted = list(dict.fromkeys(digests))
        if not wanted:
            return set()
        if len(wanted) > LIST_ABOVE:
            return self.listing(kind) & set(wanted)
        found = self.fs.exists([self.path(kind, d) for d in wanted])
        return {d for d, there in zip(wanted, found) if there}

    def fetch(self, kind: str, digests: Iterable[str]) -> dict[str, bytes]:
        """digest -> payload of the valid entries among `digests`; a corrupt or foreign entry is left out (logged)."""
        present = sorted(self.contains(kind, digests))
        if not present:
            return {}
        paths = {self.path(kind, d): d for d in present}
        raw = self.fs.fs.cat(list(paths), on_error="omit")
        payloads = {}
        for path, data in raw.items():
            digest = paths.get(path) or paths.get(self.fs._strip_protocol(path))
            if digest is None:
                continue
            payload = parse_entry(kind, digest, data)
            if payload is None:
                self.counts["rejected"] = self.counts.get("rejected", 0) + 1
                log.warning("work store: entry %s/%s is corrupt or not what its name says: doing the work again",
                            kind, digest)
                continue
            payloads[digest] = payload
        return payloads

    def put(self, kind: str, digest: str, payload: bytes) -> None:
        """Save one entry whole: a reader sees the complete entry or none (one PUT, or a temporary name renamed)."""
        import io

        target, data = self.path(kind, digest), entry_bytes(kind, digest, payload)
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        if protocol in ATOMIC_PUT or protocol == "local":    # LocalFileSystem.upload_fobj: temp file + os.rename
            self.fs.upload_fobj(io.BytesIO(data), target)
            return
        temporary = f"{target}.tmp-{uuid.uuid4().hex}"
        self.fs.upload_fobj(io.BytesIO(data), temporary)
        self.fs.mv(temporary, target)

    def put_many(self, kind: str, entries: dict[str, bytes]) -> None:
        """Save several entries, in parallel threads."""
        if not entries:
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(16, len(entries))) as pool:
            list(pool.map(lambda item: self.put(kind, *item), entries.items()))

    def remove(self, kind: str, digests: Iterable[str]) -> int:
        """Delete the entries of `digests`; returns how many were deleted."""
        paths = [self.path(kind, d) for d in digests]
        if paths:
            self.fs.rm(paths)
        return len(paths)

    def describe(self) -> str:
        """The store's location, for logs."""
        return self.fs.unstrip_protocol(self.root)


def from_url(url: str) -> WorkStore:
    """A store at a URL (s3://bucket/prefix, gs://..., ssh://..., a local folder), through DVC's filesystems."""
    from dvc.fs import get_cloud_fs

    if "://" not in url:
        url = str(Path(url).absolute())
    cls, config, path = get_cloud_fs({}, url=url)
    return WorkStore(cls(**config), path)


def team_store(root: str | Path = ".") -> WorkStore | None:
    """The team's store: PAS_WORK_STORE, else `<default DVC remote>/pas-work` of the repository at `root`, else None."""
    url = os.environ.get(ENV, "").strip()
    if url:
        return from_url(url)
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        repo = Repo(str(root), uninitialized=False)
    except NotDvcRepoError:
        return None
    with repo:
        if not repo.config["core"].get("remote"):
            return None
        remote = repo.cloud.get_remote()
        return WorkStore(remote.fs, remote.fs.join(remote.path, PREFIX))


def resolve(store: WorkStore | str | None) -> WorkStore | None:
    """A stage's `store` argument: TEAM looks up the team's store (logged), a WorkStore or None is itself."""
    if store != TEAM:
        return store   # type: ignore[return-value]
    found = team_store()
    if found is not None:
        log.info("team work store: %s", found.describe())
    return found
