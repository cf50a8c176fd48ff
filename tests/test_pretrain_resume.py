"""Checkpoints and resume: a pretraining process killed mid-epoch resumes from its last checkpoint
and ends where an uninterrupted run ends (same optimizer steps, same weights)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file
from test_pretrain import TINY, cpu, curated  # noqa: F401  (fixtures)
from test_ssl import one_thread  # noqa: F401  (fixture)

from conftest import REPO
from pas.core.shards import write_table
from pas.ssl.checkpoint import run_digest, run_dir
from pas.ssl.module import PretrainModule
from pas.ssl.pretrain import PretrainConfig, pretrain

CFG = {"backbone": TINY, "image_size": 32, "epochs": 3, "batch_size": 8}     # 4 steps per epoch, 12 in all
CRASH_AFTER_STEP = 5     # early in epoch 2; the last checkpoint is step 4, taken at the end of epoch 1
KILL_AFTER_STEP = 7      # mid-epoch 2; the last checkpoint (every 2 steps) is step 6, mid-epoch

CHILD = """
import json, os, signal, sys
from pathlib import Path
import torch
from pas.ssl.pretrain import PretrainConfig, pretrain
from pas.core.shards import read_table
from pas.ssl.module import PretrainModule

torch.set_num_threads(1)
manifest, root, out, checkpoints, cfg, kill_after = sys.argv[1:]
step = PretrainModule.optimizer_step

def step_then_die(self, *args, **kwargs):
    step(self, *args, **kwargs)
    if self.trainer.global_step + 1 == int(kill_after):
        os.kill(os.getpid(), signal.SIGKILL)          # no cleanup, no final checkpoint

PretrainModule.optimizer_step = step_then_die
pretrain(read_table(manifest), Path(root), PretrainConfig(**json.loads(cfg)), Path(out), seed=0,
         checkpoint_dir=Path(checkpoints), checkpoint_every=2)
"""


def test_killed_run_resumes_to_the_same_steps_and_weights(curated: tuple[pa.Table, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash after step 5 (resume point: an epoch end), SIGKILL after step 7 (resume point: mid-epoch), finish."""
    manifest, root = curated
    cfg = PretrainConfig(**CFG)
    plain = pretrain(manifest, root, cfg, tmp_path / "plain", seed=0)
    assert plain["steps"] == 12
    checkpoints = tmp_path / "checkpoints"

    step = PretrainModule.optimizer_step

    def step_then_crash(self, *args, **kwargs):
        step(self, *args, **kwargs)
        if self.trainer.global_step + 1 == CRASH_AFTER_STEP:
            raise RuntimeError("crash")

    with monkeypatch.context() as patch:
        patch.setattr(PretrainModule, "optimizer_step", step_then_crash)
        with pytest.raises(RuntimeError, match="crash"):
            pretrain(manifest, root, cfg, tmp_path / "crashed", seed=0, checkpoint_dir=checkpoints, checkpoint_every=2)
    (run,) = [p for p in checkpoints.iterdir() if p.is_dir()]
    state = torch.load(run / "last.ckpt", weights_only=False)
    assert state["global_step"] == 4 and len(state["pas"]["history"]) == 1     # saved after epoch 1's end hooks

    write_table(manifest, tmp_path / "manifest.parquet")
    env = {**os.environ, "PAS_DEVICE": "cpu", "PAS_NUM_WORKERS": "0", "PYTHONPATH": str(REPO / "src")}
    killed = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "manifest.parquet"), str(root),
                             str(tmp_path / "killed"), str(checkpoints), json.dumps(CFG), str(KILL_AFTER_STEP)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert torch.load(run / "last.ckpt", weights_only=False)["global_step"] == KILL_AFTER_STEP - 1
    assert (checkpoints / ".gitignore").read_text().strip().endswith("*")       # never committed
    assert not (tmp_path / "killed").exists()

    resumed = pretrain(manifest, root, cfg, tmp_path / "resumed", seed=0, checkpoint_dir=checkpoints,
                       checkpoint_every=2)
    assert resumed["resumed_at_step"] == KILL_AFTER_STEP - 1
    assert resumed["steps"] == plain["steps"] and resumed["epochs"] == plain["epochs"] == 3
    assert resumed["loss_first_epoch"] == pytest.approx(plain["loss_first_epoch"], rel=1e-5)   # history kept
    assert resumed["loss_last_epoch"] == pytest.approx(plain["loss_last_epoch"], rel=1e-4)
    a = load_file(str(tmp_path / "plain" / "backbone.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "backbone.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)   # same data, same updates
    assert not run.exists()                                                # a finished run drops its checkpoints


def test_a_different_run_never_resumes_from_another_runs_checkpoint(tmp_path: Path) -> None:
    first = run_dir(tmp_path, {"config": {"lr": 0.1}, "seed": 0})
    assert run_dir(tmp_path, {"config": {"lr": 0.1}, "seed": 0}) == first
    assert run_dir(tmp_path, {"config": {"lr": 0.2}, "seed": 0}) != first
    assert first.name == run_digest({"seed": 0, "config": {"lr": 0.1}})   # key order does not matter
    assert json.loads((first / "run.json").read_text())["config"] == {"lr": 0.1}


def test_step_checkpoints_are_taken_only_where_the_optimizer_stepped(tmp_path: Path) -> None:
    """With 2 batches per step, a due step is saved after its second batch, never mid-accumulation."""
    from types import SimpleNamespace

    from pas.ssl.checkpoint import StepCheckpoint

    saved: list[int] = []
    trainer = SimpleNamespace(accumulate_grad_batches=2, num_training_batches=8, global_step=0)
    trainer.save_checkpoint = lambda path: saved.append(trainer.global_step)
    callback = StepCheckpoint(tmp_path, every_n_steps=2)
    for batch_idx in range(7):                     # global_step as Lightning has it after each batch
        trainer.global_step = (batch_idx + 1) // 2
        callback.on_train_batch_end(trainer, None, None, None, batch_idx)
    assert saved == [2]                            # batch 3 stepped to 2; batch 4 (step still 2) did not step
