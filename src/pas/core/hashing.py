"""File digests, read in 1 MiB blocks (hashlib.file_digest arrives only in Python 3.11)."""
from __future__ import annotations

import hashlib
from pathlib import Path


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes: sha256 for weights, md5 to match what DVC records in dvc.lock."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
