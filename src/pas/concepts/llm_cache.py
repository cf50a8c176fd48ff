"""On-disk LLM response cache: one JSON file per (backend, model, prompt, temperature, seed)."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from pas.core.shards import write_json

log = logging.getLogger(__name__)


def cache_key(backend: str, model: str, prompt: str, temperature: float, seed: int) -> str:
    """Stable hex key of one request (the endpoint URL and the API key are deliberately not part of it)."""
    payload = json.dumps([backend, model, prompt, round(float(temperature), 6), int(seed)], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class ResponseCache:
    """A folder of `<key[:2]>/<key>.json` records; DVC tracks the folder so `dvc pull` shares answers."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """Where the record for `key` lives."""
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached record, or None (an unreadable record counts as a miss and is logged)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            log.warning("ignoring unreadable LLM cache record %s: %s", path, err)
            return None
        return record if isinstance(record, dict) and isinstance(record.get("response"), str) else None

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Store a record atomically (request fields and the raw response; never credentials)."""
        write_json(record, self.path(key))

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*/*.json"))
