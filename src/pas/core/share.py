"""`pas share`: push DVC's run-cache *with* the outputs its entries restore, so a colleague's `dvc exp run --pull` with
params someone already ran checks the results out instead of recomputing them.

    pas share [-r REMOTE]        then, on another clone: dvc pull --run-cache && dvc exp run --pull -S ...

`dvc push --run-cache` (DVC 3) sends the entries (.dvc/cache/runs) but only the workspace's outputs: a queued
experiment's outputs, and every `cache: false` output (metrics/<stage>.json, plots) that DVC commits to the local cache
for the run-cache, never reach the remote, and a restore elsewhere stops at "Missing cache files".
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

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


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: pas share [-r REMOTE]."""
    import json

    from pas.core.runtime import setup_logging
    from pas.core.stage import command_parser

    parser = command_parser("share", __doc__)
    parser.add_argument("-r", "--remote", default=None, help="DVC remote (default: the repository's default remote)")
    args = parser.parse_args(argv)
    setup_logging()
    print(json.dumps(share(".", args.remote)))
    return 0
