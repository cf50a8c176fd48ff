"""`pas share`: push DVC's run-cache *with* the outputs its entries restore, so a colleague's `dvc exp run --pull` with
params someone already ran checks the results out instead of recomputing them.

    pas share [-r REMOTE]        then, on another clone: dvc pull --run-cache && dvc exp run --pull -S ...
    pas share --gc [--keep-days 30] [--dry-run]      clean the team's work store (pas.core.work_store)

`dvc push --run-cache` (DVC 3) sends the entries (.dvc/cache/runs) but only the workspace's outputs: a queued
experiment's outputs, and every `cache: false` output (metrics/<stage>.json, plots) that DVC commits to the local cache
for the run-cache, never reach the remote, and a restore elsewhere stops at "Missing cache files".
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pas.core.work_store import WorkStore

log = logging.getLogger(__name__)


def run_cache_entries(root: str | Path) -> list[tuple[str, str]]:
    """(key, value) of every run-cache entry of the repository at `root` (.dvc/cache/runs/<xx>/<key>/<value>)."""
    runs = Path(root) / ".dvc" / "cache" / "runs"
    return sorted((entry.parent.name, entry.name) for entry in runs.glob("*/*/*") if entry.is_file())


def share(root: str | Path = ".", remote: str | None = None) -> dict[str, int]:
    """Push the run-cache entries and every object their outputs need; returns counts (entries, objects, failed)."""
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    from pas.core.config import PasError

    try:
        repo = Repo(str(root))
    except NotDvcRepoError:
        raise PasError(f"{Path(root).absolute()} is not inside a DVC repository; run pas share there") from None
    with repo:
        try:
            repo.stage_cache.push(remote)
            entries = run_cache_entries(repo.root_dir)
            objects = {obj for objs in repo.stage_cache.get_used_objs(entries, remote=remote).values() for obj in objs}
            missing = {obj for obj in objects if not repo.cache.local.exists(obj.value)
                       and not repo.cache.legacy.exists(obj.value)}
            result = repo.cloud.push(objects - missing, remote=remote)
        except DvcException as err:   # no remote, an unknown remote name, credentials: DVC's own message
            raise PasError(" ".join(str(err).split())) from err
    counts = {"entries": len(entries), "objects": len(objects - missing), "uploaded": len(result.transferred),
              "failed": len(result.failed), "not_in_cache": len(missing)}
    log.info("pushed the run-cache: %s", counts)
    if result.failed:
        raise PasError(f"{len(result.failed)} run-cache output(s) failed to upload; run pas share again")
    return counts


def work_outputs(root: Path) -> dict[str, Path]:
    """kind -> the workspace folder holding what that kind of work made, from dvc.yaml's `vars: paths` (the one place
    the pipeline's paths are written): generated shards, pool chunks, retrieved shards."""
    import yaml

    from pas.core.config import PasError

    dvc_yaml = root / "dvc.yaml"
    if not dvc_yaml.is_file():
        raise PasError(f"{dvc_yaml} not found: run pas share --gc in the repository's root")
    paths = {k: v for entry in yaml.safe_load(dvc_yaml.read_text()).get("vars", []) if isinstance(entry, dict)
             for k, v in (entry.get("paths") or {}).items()}
    return {"images": root / paths["generated"], "pool-chunks": root / paths["pool_index"] / "chunks",
            "downloads": root / paths["retrieved"]}


def referenced_digests(root: str | Path = ".") -> dict[str, set[str]]:
    """kind -> the work-store digests the workspace's current outputs were made from: generated shards' records
    (job digest: `fingerprint`), pool chunks (`pas.fingerprint`), retrieved shards' records (their URL's digest)."""
    import hashlib

    import pyarrow.parquet as pq

    from pas.core.shards import read_shard

    folders = work_outputs(Path(root))
    found: dict[str, set[str]] = {kind: set() for kind in folders}
    for shard in sorted(folders["images"].glob("*.tar")):
        found["images"] |= {meta["fingerprint"] for _, _, meta in read_shard(shard) if meta.get("fingerprint")}
    for chunk in sorted(folders["pool-chunks"].glob("chunk-*.parquet")):
        digest = (pq.read_schema(chunk).metadata or {}).get(b"pas.fingerprint")
        if digest:
            found["pool-chunks"].add(digest.decode())
    for shard in sorted(folders["downloads"].glob("*.tar")):   # pas.sources.download.url_digest
        found["downloads"] |= {hashlib.sha256(meta["url"].encode()).hexdigest()[:32]
                               for _, _, meta in read_shard(shard) if meta.get("url")}
    return found


def _mtime(info: dict) -> float | None:
    """An entry's modification time (seconds since the epoch) from a listing's details, if the filesystem gives one."""
    import datetime

    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime.datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _listing(store: WorkStore, folder: str) -> dict[str, dict]:
    """path -> details (size, time) of every file under `folder`: one detailed listing where the filesystem gives
    one (S3, GCS, Azure), else its paths and then their details in parallel (a local folder)."""
    try:
        found = store.fs.fs.find(folder, detail=True)
        if isinstance(found, dict):
            return found
        paths = list(found)
    except FileNotFoundError:
        return {}
    return dict(zip(paths, store.fs.info(paths))) if paths else {}


def gc(store: WorkStore, referenced: dict[str, set[str]], keep_days: float = 30.0, dry_run: bool = False,
       now: float | None = None) -> dict[str, Any]:
    """Delete the entries no current output was made from AND not written in the last `keep_days` days (an entry
    whose filesystem gives no time is kept unless keep_days is 0); a referenced entry is never deleted. Returns
    what went (or would go): entries and bytes per kind, and the paths."""
    import time

    cutoff = (time.time() if now is None else now) - keep_days * 86_400
    report: dict[str, Any] = {"dry_run": dry_run, "keep_days": keep_days, "kinds": {}, "paths": []}
    for kind in ("images", "downloads", "pool-chunks"):
        listing = _listing(store, store.fs.join(store.root, kind))
        doomed, size = [], 0
        for path, info in listing.items():
            name = store.fs.name(path)
            if name.startswith(".") or ".tmp-" in name or name in referenced.get(kind, set()):
                continue
            written = _mtime(info)
            if keep_days > 0 and (written is None or written > cutoff):
                continue
            doomed.append(path)
            size += int(info.get("size") or 0)
        if doomed and not dry_run:
            store.fs.fs.rm(doomed)
        report["kinds"][kind] = {"entries": len(doomed), "bytes": size, "kept": len(listing) - len(doomed)}
        report["paths"] += sorted(doomed)
    report["bytes"] = sum(k["bytes"] for k in report["kinds"].values())
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: pas share [-r REMOTE]."""
    import json

    from pas.core.runtime import setup_logging
    from pas.core.stage import command_parser

    parser = command_parser("share", __doc__)
    parser.add_argument("-r", "--remote", default=None, help="DVC remote (default: the repository's default remote)")
    parser.add_argument("--gc", action="store_true", help="delete work-store entries no current output was made "
                        "from and not written in the last --keep-days days (the run-cache is not touched)")
    parser.add_argument("--keep-days", type=float, default=30.0, help="with --gc: keep entries younger than this")
    parser.add_argument("--dry-run", action="store_true", help="with --gc: print what would go, delete nothing")
    args = parser.parse_args(argv)
    setup_logging()
    if args.gc:
        from pas.core.config import PasError
        from pas.core.work_store import team_store

        if args.keep_days < 0:
            raise PasError(f"--keep-days {args.keep_days}: give 0 or more days")
        store = team_store(".")
        if store is None:
            raise PasError("no team work store: set PAS_WORK_STORE or a default DVC remote (dvc remote add -d)")
        report = gc(store, referenced_digests("."), args.keep_days, args.dry_run)
        for path in report["paths"]:
            print(f"{'would delete' if args.dry_run else 'deleted'} {path}")
        print(json.dumps({k: v for k, v in report.items() if k != "paths"}))
        return 0
    print(json.dumps(share(".", args.remote)))
    return 0
