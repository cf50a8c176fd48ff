"""Parallel sweeps (slow): `dvc exp run --queue -S size=A,B,C,D generate` and `dvc queue start -j 2`, three times in
one temporary clone. Every experiment succeeds and holds its own size (dvc.lock, metrics, generated manifest), MLflow
holds one pipeline run per experiment with its stage runs, and the team's work store (PAS_WORK_STORE), written by
both workers at once, holds every rendered image once: none lost, none twice, none half-written.

DVC users report queue workers tripping at -j > 1: treeverse/dvc#10673 (experiments fail with no logs, a worker
dies; the raw worker logs are .dvc/tmp/exps/celery/dvc-exp-worker-N.out, treeverse/dvc#9143) and treeverse/dvc#10562
(workers stop while tasks are still queued; one way, reading dvc_task/worker/temporary.py, TemporaryWorker.monitor:
an inspect call left unanswered within its timeout, as on a loaded machine, counts as an empty queue). So each sweep
waits until its workers are gone before the next one is queued (never hands tasks to a worker that is shutting down),
then requires every task Success; a failure carries `dvc queue status`, the failed tasks' logs and the worker logs.

The race found while writing this test is in pas: two workers' first stages opening a new mlflow.db at once ran MLflow's
schema migrations (table already exists, duplicate column; now and then a file left half-migrated that no later stage
could log to). pas.core.mlflow_store.open_client serialises that; the last test checks it with processes.

Cheap by design: the baseline commit holds models, sample_data, concepts and pool_index, so each experiment runs only
the stages `size` reaches on the way to `generate` (retrieve, generate), with PAS_NUM_THREADS=1 (two workers on two
cores); each sweep's sizes extend the last one's, so every sweep renders new images into the store.
"""
from __future__ import annotations

import collections
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from dvc_repo import copy_sources, set_params
from pas.core.config import MixConfig
from pas.core.work_store import parse_entry
from pas.sources.generate import IMAGES
from pas.sources.plan import candidate_counts

SMALL = {"size": 16, "oversample": 1.0, "sample_data.pool_animals": 100, "sample_data.downstream_train": 60,
         "sample_data.downstream_test": 30, "generate.shard_size": 3, "pool_index.source": "data/pool/animals",
         "pool_index.chunk_size": 32}
SWEEPS = ((4, 6, 8, 10), (12, 14, 16, 18), (20, 22, 24, 26))   # each sweep's images extend the last one's
SWEEP_TIMEOUT = 600          # seconds for one sweep's four experiments
SWEEP_SCENARIO = pytest.mark.skipif(not os.environ.get("PAS_SWEEP"), reason=(
    "three queued sweeps take 4-10 min on a 2-CPU machine, more than the CI budget leaves: set PAS_SWEEP=1 to run "
    "them; the MLflow race they found is checked below in every run"))


def generated(size: int) -> int:
    return candidate_counts(size, SMALL["oversample"], MixConfig(0.5, 0.5))["generated"]   # params' mix


def sh(cmd: str, cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def queue_status(repo: Path, env: dict[str, str]) -> tuple[dict[str, str], str]:
    """({task name: status}, the raw output) from `dvc queue status`."""
    out = sh("dvc queue status", repo, env).stdout
    return dict(re.findall(r"^\w{7}\s+(\S+)\s+.*?\s(Queued|Running|Success|Failed)\s*$", out, re.M)), out


def queue_trouble(repo: Path, env: dict[str, str], status: str, why: str) -> AssertionError:
    """An AssertionError saying what tripped, with the queue's status, failed tasks' logs and the worker logs."""
    logs = [status]
    for name in re.findall(r"^\w{7}\s+(\S+)\s+.*\sFailed\s*$", status, re.M):
        log = sh(f"dvc queue logs {name}", repo, env, check=False)
        logs.append(f"--- dvc queue logs {name}\n{log.stdout[-3000:]}{log.stderr[-1000:]}")
    for worker in sorted((repo / ".dvc/tmp/exps/celery").glob("dvc-exp-worker-*.out")):
        logs.append(f"--- {worker.name}\n" + worker.read_text(errors="replace")[-3000:])
    return AssertionError(why + "\n" + "\n".join(logs))


def queue_workers(repo: Path) -> list[psutil.Process]:
    """The repository's queue workers and the `dvc queue start` processes that wait on them."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        line = " ".join(proc.info["cmdline"] or [])
        if ("queue-worker" in line or "queue start" in line) and proc.info["cwd"] == str(repo.resolve()):
            found.append(proc)
    return found


def run_sweep(repo: Path, env: dict[str, str], sizes: tuple[int, ...], known: set[str]) -> dict[str, str]:
    """Queue one experiment per size, start two workers and wait until they are gone (a worker exits once the queue
    is empty); returns {task name: status} of this sweep's tasks."""
    sh(f"dvc exp run --queue -S size={','.join(map(str, sizes))} generate", repo, env)
    sh("dvc queue start -j 2 > .dvc/tmp/queue-start.log 2>&1", repo, env)   # returns at once: the workers detach
    deadline = time.monotonic() + SWEEP_TIMEOUT
    while queue_workers(repo):
        if time.monotonic() > deadline:
            raise queue_trouble(repo, env, queue_status(repo, env)[1], f"sweep {sizes} not done in {SWEEP_TIMEOUT} s")
        time.sleep(1)
    tasks, out = queue_status(repo, env)
    mine = {name: state for name, state in tasks.items() if name not in known}
    if len(mine) != len(sizes) or set(mine.values()) != {"Success"}:
        raise queue_trouble(repo, env, out, f"sweep {sizes}: the workers are gone, and the tasks are {mine} "
                            "(tasks left Queued: treeverse/dvc#10562; Failed with no log: treeverse/dvc#10673)")
    return mine


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """A temporary clone whose baseline commit holds the stages `size` does not reach, then the three sweeps."""
    root = tmp_path_factory.mktemp("sweep")
    repo = copy_sources(root / "repo")
    set_params(repo, SMALL)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "PAS_LOG_LEVEL": "INFO",
           "PAS_WORK_STORE": str(root / "store"), "PAS_NUM_THREADS": "1"}
    for name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_ROOT", "DVC_STAGE", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    git = "git -c user.name=t -c user.email=t@t"
    sh(f"git init -q -b main && git add -A && {git} commit -qm init", repo, env)
    # the baseline logs elsewhere: the first sweep's two workers create the repository's mlflow.db
    sh("dvc repro pool_index concepts", repo, {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'baseline.db'}"})
    sh(f"git add -A && {git} commit -qm baseline", repo, env)
    known: set[str] = set()
    done, started = [], time.monotonic()
    try:
        for sizes in SWEEPS:
            tasks = run_sweep(repo, env, sizes, known)
            known |= set(tasks)
            done.append({"sizes": sizes, "tasks": tasks, "store": sorted((root / "store" / IMAGES).rglob("*"))})
    finally:
        if queue_workers(repo):               # a sweep that failed: no worker outlives the test
            sh("dvc queue stop --kill", repo, env, check=False)
    print(f"three sweeps: {time.monotonic() - started:.0f} s")
    return {"repo": repo, "root": root, "env": env, "sweeps": done}


def exp_locks(repo: Path, env: dict[str, str]) -> dict[str, dict]:
    """{experiment name: its dvc.lock}, read from the experiment refs."""
    refs = sh("git for-each-ref --format='%(refname)' refs/exps", repo, env).stdout.split()
    return {ref.rsplit("/", 1)[1]: yaml.safe_load(sh(f"git show {ref}:dvc.lock", repo, env).stdout)
            for ref in refs if len(ref.split("/")) == 5}     # refs/exps/<baseline[:2]>/<baseline[2:]>/<name>


def cached(repo: Path, md5: str) -> Path:
    return repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]


def out_md5(lock: dict, stage: str, path: str) -> str:
    (md5,) = [out["md5"] for out in lock["stages"][stage]["outs"] if out["path"] == path]
    return md5


def manifest_digests(repo: Path, lock: dict) -> list[str]:
    """The job digests of an experiment's generated images: data/generated/manifest.parquet, read from DVC's cache."""
    listing = json.loads(cached(repo, out_md5(lock, "generate", "data/generated")).read_text())
    (md5,) = [entry["md5"] for entry in listing if entry["relpath"] == "manifest.parquet"]
    return pq.read_table(cached(repo, md5), columns=["fingerprint"]).column("fingerprint").to_pylist()


@pytest.mark.slow
@SWEEP_SCENARIO
def test_every_queued_experiment_succeeds_and_holds_its_own_size(sweeps):
    repo, locks = sweeps["repo"], exp_locks(sweeps["repo"], sweeps["env"])
    for sweep in sweeps["sweeps"]:
        assert sorted(sweep["tasks"].values()) == ["Success"] * len(sweep["sizes"]), sweep["tasks"]
        sizes = {}
        for name in sweep["tasks"]:
            lock = locks[name]
            size = lock["stages"]["generate"]["params"]["params.yaml"]["size"]
            assert lock["stages"]["retrieve"]["params"]["params.yaml"]["size"] == size
            assert f"--size {size}" in lock["stages"]["generate"]["cmd"]
            metrics = json.loads(cached(repo, out_md5(lock, "generate", "metrics/generate.json")).read_text())
            retrieved = json.loads(cached(repo, out_md5(lock, "retrieve", "metrics/retrieve.json")).read_text())
            assert metrics["images"] == len(manifest_digests(repo, lock)) == generated(size)
            assert retrieved["images"] == size - generated(size)
            sizes[name] = size
        assert sorted(sizes.values()) == sorted(sweep["sizes"])     # one experiment per queued size


def mlflow_runs(repo: Path) -> list[dict]:
    """Every run of the repository's mlflow.db: id, status, tags, params, latest metrics."""
    db = sqlite3.connect(repo / "mlflow.db")
    runs = {rid: {"id": rid, "status": status, "tags": {}, "params": {}, "metrics": {}}
            for rid, status in db.execute("select run_uuid, status from runs")}
    for table, field in (("tags", "tags"), ("params", "params"), ("latest_metrics", "metrics")):
        for rid, key, value in db.execute(f"select run_uuid, key, value from {table}"):
            runs[rid][field][key] = value
    db.close()
    return list(runs.values())


@pytest.mark.slow
@SWEEP_SCENARIO
def test_mlflow_holds_one_pipeline_run_per_experiment_with_its_stage_runs(sweeps):
    runs = mlflow_runs(sweeps["repo"])
    pipelines = collections.defaultdict(list)
    for run in runs:
        if run["tags"].get("pas.kind") == "pipeline":
            pipelines[run["tags"].get("dvc.exp_name")].append(run)
    names = {name for sweep in sweeps["sweeps"] for name in sweep["tasks"]}
    assert set(pipelines) == names and all(len(found) == 1 for found in pipelines.values()), pipelines.keys()
    for name, (pipeline,) in pipelines.items():
        size = int(pipeline["params"]["size"])
        children = [run for run in runs if run["tags"].get("mlflow.parentRunId") == pipeline["id"]]
        stages = sorted(run["tags"]["pas.stage"] for run in children)
        assert stages == ["generate", "retrieve"], (name, stages)      # the stages `size` reaches, once each
        assert pipeline["status"] == "FINISHED" and {run["status"] for run in children} == {"FINISHED"}
        assert {run["params"]["size"] for run in children} == {str(size)}
        (gen,) = [run for run in children if run["tags"]["pas.stage"] == "generate"]
        assert gen["metrics"]["images_rendered"] + gen["metrics"]["images_restored"] == generated(size)


@pytest.mark.slow
@SWEEP_SCENARIO
def test_both_workers_fill_the_work_store_with_every_image_once(sweeps):
    repo, locks = sweeps["repo"], exp_locks(sweeps["repo"], sweeps["env"])
    store, made = sweeps["root"] / "store" / IMAGES, set()
    runs = {run["tags"].get("dvc.exp_name"): run for run in mlflow_runs(repo)
            if run["tags"].get("pas.stage") == "generate"}
    for sweep in sweeps["sweeps"]:
        digests = {d for name in sweep["tasks"] for d in manifest_digests(repo, locks[name])}
        new, made = digests - made, made | digests
        files = [path for path in sweep["store"] if path.is_file()]
        assert sorted(path.name for path in files) == sorted(made)      # every image, once; no temporary left
        rendered = sum(runs[name]["metrics"]["images_rendered"] for name in sweep["tasks"])
        assert rendered >= len(new) > 0                                  # each new image was rendered in this sweep
    for path in store.rglob("*"):
        if path.is_file():                                               # each entry whole and what its name says
            assert parse_entry(IMAGES, path.name, path.read_bytes()) is not None, path


OPEN_STORE = """
import sys, time
from pathlib import Path
from pas.core.mlflow_store import open_client
import mlflow.tracking
Path(sys.argv[2] + sys.argv[3]).touch()
while not all(Path(sys.argv[2] + str(i)).exists() for i in range(2)):   # both imported MLflow: go
    time.sleep(0.001)
client = open_client(sys.argv[1])
print(client.search_experiments()[0].name)
"""


def test_processes_opening_a_new_mlflow_store_at_once_all_get_it(tmp_path):
    # Without open_client's lock, one of two processes failed nearly every time ("table latest_metrics already
    # exists", "duplicate column name: step"), and now and then the file stayed half-migrated for good.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, uri, str(tmp_path / "ready-"), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0 and out.strip() == "Default", err[-2000:]
