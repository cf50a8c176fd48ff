"""Resumable runs: one checkpoint folder per run fingerprint, written atomically, outside DVC outputs.

    <root>/.gitignore           "*": the folder keeps itself out of git
    <root>/<fingerprint>/run.json   what the fingerprint covers (config, seed, data, sizes)
    <root>/<fingerprint>/last.ckpt  the latest Lightning checkpoint (every N optimizer steps)

A run looks for last.ckpt under its own fingerprint only, so a changed parameter or dataset
never resumes from another run's state. The folder is removed when its run completes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temporary file, then rename: a kill mid-write leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        """Write `checkpoint` to `path` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def run_digest(run: dict[str, Any]) -> str:
    """A short sha256 of everything that determines a run's trajectory (JSON, sorted keys)."""
    return hashlib.sha256(json.dumps(run, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_dir(root: str | Path, run: dict[str, Any]) -> Path:
    """<root>/<fingerprint of run>, created with run.json; root gets a '*' .gitignore."""
    root = Path(root)
    path = root / run_digest(run)
    path.mkdir(parents=True, exist_ok=True)
    if not (root / ".gitignore").exists():
        (root / ".gitignore").write_text("# pretraining checkpoints: resumable state, never committed\n*\n")
    (path / "run.json").write_text(json.dumps(run, indent=2, sort_keys=True, default=str) + "\n")
    return path


def last_checkpoint(path: Path) -> Path | None:
    """The run's latest checkpoint, if a previous attempt left one."""
    last = path / LAST
    return last if last.is_file() else None


class StepCheckpoint(Checkpoint):
    """Overwrite <dirpath>/last.ckpt every `every_n_steps` optimizer steps.

    Only at the end of an accumulation window (the batch that stepped the optimizer), so a resumed
    run never restarts with half-accumulated gradients.
    A due step that ends an epoch is saved after the epoch's end hooks (epoch means, kNN
    monitor), so a run resumed from it never misses them. Checkpoint callbacks run after the
    LightningModule's on_train_epoch_end.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 1")
        self.path = Path(dirpath) / LAST
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        ends_epoch = batch_idx + 1 >= trainer.num_training_batches
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if stepped and trainer.global_step % self.every_n_steps == 0 and not ends_epoch:
            trainer.save_checkpoint(self.path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            trainer.save_checkpoint(self.path)


def finish(path: Path) -> None:
    """Remove a completed run's checkpoint folder (its result is in the stage outputs)."""
    shutil.rmtree(path, ignore_errors=True)
    log.info("run complete: removed its checkpoints %s", path)
