"""Atomic writes: a temporary sibling renamed onto the target only when the block succeeds, and stable JSON.

Standard library and psutil only, so that a stage reading and writing JSON pays no import of the shard stack
(webdataset pulls in torch)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil


def _remove_stale_temporaries(path: Path) -> None:
    """Delete `.<name>.tmp-<pid>` siblings left by a killed process (pid no longer running)."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        pid = stale.name.rpartition("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not psutil.pid_exists(int(pid)):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` as a whole when the block succeeds."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        yield tmp
        if path.exists():
            shutil.rmtree(path)


def write_json(data: Any, path: str | Path) -> None:
    """Write JSON atomically with stable formatting."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
