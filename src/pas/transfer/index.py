"""finetune's index (index.json): where it lives and how later stages read it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def index_path(finetune_dir: str | Path) -> Path:
    """<finetune_dir>/index.json: every path finetune wrote, relative to finetune_dir, with its settings."""
    return Path(finetune_dir) / "index.json"


def read_finetune_index(finetune_dir: str | Path) -> dict[str, Any]:
    """finetune's index.json, with a clear error when the stage has not run."""
    path = index_path(finetune_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the finetune stage first (dvc repro finetune)")
    return json.loads(path.read_text())


def pretrain_dataset(index: dict[str, Any]) -> dict[str, str] | None:
    """The dataset record ({name, path, md5}) a pretrained init of the finetune index was trained on, if any."""
    return next((init["source"]["dataset"] for init in index["inits"].values() if "dataset" in init["source"]), None)
