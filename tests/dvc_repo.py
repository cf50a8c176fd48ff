"""Helpers of the end-to-end tests: a temporary copy of the repository, DVC commands run in it, params set in it."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
COMMITTED_RESULTS = ("dvc.lock", "metrics/", "plots/")


def run(cmd: str, cwd: Path, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a shell command in `cwd` (offline DVC and MLflow settings, INFO logs); fail with its output's tail."""
    env = {**(os.environ if env is None else env), "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PAS_LOG_LEVEL": "INFO"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def ran(proc: subprocess.CompletedProcess) -> set[str]:
    """The stages a `dvc repro` / `dvc exp run` ran, read from its output."""
    return set(re.findall(r"Running stage '(\w+)'", proc.stdout + proc.stderr))


def copy_sources(dest: Path) -> Path:
    """Copy the working tree's source files (git's view: tracked and untracked-not-ignored) into `dest`.

    The committed results (dvc.lock, metrics/, plots/) are left out, so every stage runs in the copy.
    """
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if name.startswith(COMMITTED_RESULTS) or not (REPO / name).is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    return dest


def set_params(repo: Path, values: dict[str, Any]) -> None:
    """Set dotted keys of the copy's params.yaml (`finetune.linear.epochs: 20`)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in values.items():
        *heads, leaf = key.split(".")
        section = params
        for head in heads:
            section = section[head]
        section[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
