"""Team sharing with real servers on 127.0.0.1 (slow): an S3 DVC remote (moto's S3 server), a shared MLflow
tracking server (`mlflow server`, SQLite + artifact root) and DVC's run-cache shared through the remote.

One small reproduction (size 100, short training) is shared by the module; colleagues are fresh `git clone`s.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from dvc_repo import copy_sources, ran, set_params
from moto_s3 import free_port, s3_server

pytestmark = pytest.mark.slow
pytest.importorskip("dvc_s3", reason="the test extra installs dvc-s3")
pytest.importorskip("moto.server", reason="the test extra installs moto[server]")

BUCKET = "pas-team"
SMALL = {"size": 100, "sample_data.pool_animals": 600, "sample_data.downstream_train": 300,
         "sample_data.downstream_test": 150, "pretrain.epochs": 1, "finetune.protocols": ["linear", "knn"],
         "finetune.linear.epochs": 20, "finetune.elfis.protocols": []}
# a colleague's experiment: only the report stage reads it. (evaluate is never restored from the run-cache: DVC saves
# no run-cache entry for a stage with a `cache: false` out that is not a metric or plot, as metrics/eval.md is; nor for
# stages with `persist: true` outs: concepts, generate, pool_index, retrieve)
EXPERIMENT = {"report.samples": 4}


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on a free port with an empty bucket; the fake credentials go in each command's env."""
    with s3_server(BUCKET) as url:
        yield url


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite backend, served artifact root) on a free port; yields its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
             "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})    # no GenAI job runners: tracking only
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)          # the server and its uvicorn worker
    proc.wait(timeout=30)
    log.close()


def env_for(s3_url: str, mlflow_url: str) -> dict[str, str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "PAS_LOG_LEVEL": "INFO",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "MLFLOW_TRACKING_URI": mlflow_url}
    for name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_ROOT", "DVC_STAGE"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def team(s3, mlflow_server, tmp_path_factory):
    """Alice's repository: the small DAG reproduced (logging to the server), committed and pushed (git to a bare
    team repository, data to the S3 remote); she also ran EXPERIMENT from the queue, then `pas share` pushed the
    run-cache with the outputs its entries restore (`dvc push --run-cache` sends the entries only)."""
    root = tmp_path_factory.mktemp("team")
    alice = root / "alice"
    env = env_for(s3, mlflow_server)

    def run(cmd: str, cwd: Path = alice) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    copy_sources(alice)
    set_params(alice, SMALL)
    git = "git -c user.name=alice -c user.email=a@t"
    run(f"git init -q --bare -b main {root / 'team.git'}", cwd=root)
    run(f"git init -q -b main && git remote add origin {root / 'team.git'} && git add -A && {git} commit -qm init")
    run(f"dvc remote add -d shared s3://{BUCKET}/store && dvc remote modify shared endpointurl {s3}")
    repro = run("dvc repro")
    run(f"git add -A && {git} commit -qm results && git push -q origin main")   # dvc.lock, metrics, the remote
    run("dvc push")
    queued = run(f"dvc exp run --queue -n alice-exp -S {' -S '.join(f'{k}={v}' for k, v in EXPERIMENT.items())} "
                 "&& dvc exp run --run-all")
    run("pas share")
    return {"root": root, "alice": alice, "env": env, "run": run, "repro": repro, "queued": queued,
            "mlflow": mlflow_server}


def rest(url: str, path: str, body: dict | None = None) -> dict:
    """One MLflow REST API call (GET without a body, POST with one)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def server_runs(url: str) -> list[dict]:
    exp = rest(url, "experiments/get-by-name?experiment_name=pas-animals")["experiment"]
    runs, token = [], None
    while True:
        page = rest(url, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000,
                                         **({"page_token": token} if token else {})})
        runs += page.get("runs", [])
        if not (token := page.get("next_page_token")):
            return runs


def tags(run: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}


def params(run: dict) -> dict[str, str]:
    return {param["key"]: param["value"] for param in run["data"].get("params", [])}


def test_pipeline_runs_and_a_queued_experiment_log_to_the_shared_server(team):
    url, runs = team["mlflow"], server_runs(team["mlflow"])
    exp = rest(url, "experiments/get-by-name?experiment_name=pas-animals")["experiment"]
    assert {t["key"]: t["value"] for t in exp["tags"]}["mlflow.experimentKind"] == "custom_model_development"
    parents = [r for r in runs if tags(r).get("pas.kind") == "pipeline"]
    repro, queued = (
        [r for r in parents if tags(r).get("dvc.exp_name") is None],
        [r for r in parents if tags(r).get("dvc.exp_name") == "alice-exp"])
    assert len(repro) == 1 and len(queued) == 1
    commit = subprocess.run(["git", "rev-parse", "HEAD~1"], cwd=team["alice"], capture_output=True, text=True,
                            check=True).stdout.strip()                  # the commit the DAG ran from
    assert tags(repro[0])["mlflow.source.git.commit"] == commit
    assert params(repro[0])["size"] == "100" and params(repro[0])["pretrain.method"] == "simclr"
    assert params(queued[0])["size"] == "100"
    children = {tags(r)["pas.stage"]: r for r in runs if tags(r).get("mlflow.parentRunId") == queued[0]["info"]["run_id"]}
    assert set(children) == {"report"}                   # the queued experiment reran only what it changed
    assert params(children["report"])["report.samples"] == "4"
    stages = {tags(r)["pas.stage"] for r in runs if tags(r).get("mlflow.parentRunId") == repro[0]["info"]["run_id"]}
    assert stages == set(yaml.safe_load((team["alice"] / "dvc.yaml").read_text())["stages"])
    for run in (children["report"], repro[0]):                       # artifacts go to the server's artifact root
        assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/")
    files = rest(url, f"artifacts/list?run_id={children['report']['info']['run_id']}")["files"]
    assert "dataset.html" in {Path(f["path"]).name for f in files}
    inputs = [d["dataset"] for r in runs for d in r.get("inputs", {}).get("dataset_inputs", [])]
    assert inputs and {json.loads(d["source"])["uri"] for d in inputs} == {"data/curated/manifest.parquet"}


def test_a_fresh_clone_pulls_everything_and_reproduces_nothing(team):
    bob = team["root"] / "bob"
    team["run"](f"git clone -q {team['root'] / 'team.git'} {bob}", cwd=team["root"])
    team["run"]("dvc pull", cwd=bob)
    manifest = bob / "data/curated/manifest.parquet"
    assert manifest.read_bytes() == (team["alice"] / "data/curated/manifest.parquet").read_bytes()
    assert (bob / "data/pretrain").is_dir() and any((bob / "data/pretrain").iterdir())
    status = team["run"]("dvc status --json", cwd=bob)
    assert json.loads(status.stdout) == {}
    proc = team["run"]("dvc repro", cwd=bob)
    assert ran(proc) == set() and "Data and pipelines are up to date" in proc.stdout


def run_cached(repo: Path) -> set[str]:
    """The stages with an entry in a repository's run-cache (.dvc/cache/runs/<key>/<value>: the stage's lock)."""
    entries = (f for f in (repo / ".dvc" / "cache" / "runs").rglob("*") if f.is_file())
    return {Path(yaml.safe_load(f.read_text())["cmd"].split()[1]).stem for f in entries}


def test_a_colleagues_experiment_already_run_is_restored_from_the_shared_run_cache(team):
    assert "report" in run_cached(team["alice"]), (
        "DVC saved no run-cache entry for the report stage: DVC never run-caches a stage with a `cache: false` out "
        "that is not declared under metrics: or plots: (dvc/stage/__init__.py, Stage.run)")
    carol = team["root"] / "carol"
    team["run"](f"git clone -q {team['root'] / 'team.git'} {carol}", cwd=team["root"])
    team["run"]("dvc pull --run-cache", cwd=carol)                   # the workspace's data and the run-cache
    before = len(server_runs(team["mlflow"]))
    sets = " ".join(f"-S {k}={v}" for k, v in EXPERIMENT.items())
    proc = team["run"](f"dvc exp run --pull -n carol-exp {sets}", cwd=carol)   # --pull: a restored stage's outputs
    assert ran(proc) == set() and "Stage 'report' is cached - skipping run" in proc.stdout + proc.stderr
    assert len(server_runs(team["mlflow"])) == before                 # no stage started, so none logged
    refs = team["run"]("git for-each-ref --format='%(refname)' refs/exps", cwd=team["alice"]).stdout.split()
    (alice_exp,) = [ref for ref in refs if ref.endswith("/alice-exp")]

    def report_md5(lock: str) -> str:
        (out,) = [o for o in yaml.safe_load(lock)["stages"]["report"]["outs"] if o["path"] == "reports/dataset.html"]
        return out["md5"]

    alice_md5 = report_md5(team["run"](f"git show {alice_exp}:dvc.lock", cwd=team["alice"]).stdout)
    assert report_md5((carol / "dvc.lock").read_text()) == alice_md5   # her experiment's report, restored ...
    assert hashlib.md5((carol / "reports/dataset.html").read_bytes()).hexdigest() == alice_md5
    assert alice_md5 != report_md5((team["alice"] / "dvc.lock").read_text())   # ... not the baseline's
    assert "carol-exp" in team["run"]("dvc exp list", cwd=carol).stdout
