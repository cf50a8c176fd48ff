"""The Hugging Face hub as the libraries use it: revisions pinned to commits, files fetched into the HF cache.

Everything goes through huggingface_hub's own cache (HF_HOME / HF_HUB_CACHE), so HF_ENDPOINT (an internal
mirror) and HF_HUB_OFFLINE=1 (a cache filled on a node with internet) work as the libraries document. A resolved
model folder is a dereferenced copy of the files its library loads: re-resolving an unchanged model costs a copy,
never a download, and gives the same bytes.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from pas.core.config import ConfigError


def offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) forbids network access."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def split_revision(name: str) -> tuple[str, str | None]:
    """`org/name@revision` -> (`org/name`, `revision`); no `@` -> revision None (the default branch)."""
    repo_id, _, revision = name.partition("@")
    return repo_id, revision or None


def pin(repo_id: str, revision: str | None = None) -> str:
    """The commit hash `revision` of `repo_id` points to now (from the cache's refs when offline)."""
    from huggingface_hub import HfApi

    return HfApi().resolve_revision(repo_id, revision=revision, local_files_only=offline()).resolved


def repo_files(repo_id: str, sha: str) -> list[str]:
    """Every file of `repo_id` at commit `sha`: the hub's listing, or offline the listing the cache keeps."""
    from huggingface_hub import HfApi, get_cached_repo_tree, snapshot_download
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    if not offline():
        return sorted(HfApi().list_repo_files(repo_id, revision=sha))
    try:
        return sorted(f.path for f in get_cached_repo_tree(repo_id, revision=sha))
    except CachedRepoTreeNotFoundError:  # a cache filled without a listing: what its snapshot holds
        folder = Path(snapshot_download(repo_id, revision=sha, local_files_only=True))
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def copy_files(snapshot: str | Path, files: Iterable[str], dest: str | Path) -> None:
    """Copy `files` (paths relative to `snapshot`) into `dest` as plain files (the cache's symlinks dereferenced)."""
    snapshot, dest = Path(snapshot), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in sorted(set(files)):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(snapshot / name, target)  # follows the snapshot's symlink to the blob


def fetch_error(key: str, said: str, repo_id: str, err: Exception, fallback: str) -> ConfigError:
    """One line saying why `repo_id` could not be had and how to get it (offline: how to fill the cache)."""
    if offline():
        return ConfigError(
            f"{key}={said!r}: {repo_id} is not in the Hugging Face cache ({cache_dir()}) and HF_HUB_OFFLINE=1 forbids "
            f"downloading it; fill the cache on a node with internet (`dvc repro models` there with the same HF_HOME, "
            f"or `hf download {repo_id}`), or unset HF_HUB_OFFLINE and set HF_ENDPOINT to an internal mirror")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return ConfigError(
        f"{key}={said!r}: could not fetch {repo_id} from {endpoint} ({type(err).__name__}: {_first_line(err)}); "
        f"check the id and the network, set HF_ENDPOINT to an internal mirror, or fill the Hugging Face cache "
        f"and set HF_HUB_OFFLINE=1; {fallback}")


def cache_dir() -> str:
    """The Hugging Face hub cache folder in use (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""
