"""The team's cache end to end (slow): two clones, one DVC remote. After Alice's `dvc exp run -S size=N` and
`pas share`, Bob's README command (`dvc pull --run-cache`, `dvc exp run --pull -S size=N`) renders no image and embeds
no pool chunk: the stages DVC never run-caches (persist outputs: generate, pool_index, retrieve) restore their work
from the work store beside the remote, and end with Alice's outputs. A larger size renders exactly the new images, a
smaller one renders nothing. Only the stages generate needs are run (the targets `generate`), at small sizes.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from dvc_repo import copy_sources, ran, set_params

pytestmark = pytest.mark.slow

SIZE, STEP = 16, 4
SMALL = {"size": SIZE, "oversample": 1.0, "sample_data.pool_animals": 100, "sample_data.downstream_train": 60,
         "sample_data.downstream_test": 30, "generate.shard_size": 3, "pool_index.source": "data/pool/animals",
         "pool_index.chunk_size": 32}
GENERATED = SIZE // 2      # oversample 1, half generated: STEP more in size is STEP // 2 more images


def env_without_dvc_run() -> dict[str, str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "PAS_LOG_LEVEL": "INFO"}
    for name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_ROOT", "DVC_STAGE", "MLFLOW_TRACKING_URI",
                 "PAS_WORK_STORE"):
        env.pop(name, None)
    return env


def sh(cmd: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def work(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """The work a run did, from its stages' log lines (run facts: never in DVC's files, which hold results only)."""
    log = proc.stdout + proc.stderr
    counts = {}
    if found := re.search(r"generate: (\d+) images rendered, (\d+) restored from the team's work store", log):
        counts["images_rendered"], counts["images_restored"] = map(int, found.groups())
    if found := re.search(r"pool: (\d+) chunks \((\d+) reused from an earlier run, (\d+) restored from the team's "
                          r"work store, (\d+) embedded\)", log):
        counts["chunks"], _, counts["chunks_restored"], counts["chunks_embedded"] = map(int, found.groups())
    return counts


def lock_outs(lock: str, stages: tuple[str, ...]) -> dict[str, str]:
    """path -> md5 of every output of `stages`, metrics included (they hold results, not the work done)."""
    entries = yaml.safe_load(lock)["stages"]
    return {out["path"]: out.get("md5") for stage in stages for out in entries[stage]["outs"]}


S3_SCENARIO = pytest.mark.skipif(not os.environ.get("PAS_TEAM_S3"), reason=(
    "the S3 scenario doubles the CI time (about 5 min here): set PAS_TEAM_S3=1 to run it; test_work_store checks the "
    "store on S3 through a DVC remote"))


@pytest.fixture(scope="module", params=["local", pytest.param("s3", marks=S3_SCENARIO)])
def team(request, tmp_path_factory):
    """Alice's clone with a remote (a local folder, or S3 on moto's server): code pushed to a bare git repository,
    then `dvc exp run -S size=SIZE generate` and `pas share`."""
    root = tmp_path_factory.mktemp(f"team-{request.param}")
    env = env_without_dvc_run()
    if request.param == "s3":
        pytest.importorskip("dvc_s3", reason="the test extra installs dvc-s3")
        server_url = request.getfixturevalue("s3_server")
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
        remote = f"dvc remote add -d shared s3://team/store && dvc remote modify shared endpointurl {server_url}"
    else:
        remote = f"dvc remote add -d shared {root / 'remote'}"
    alice = root / "alice"
    copy_sources(alice)
    set_params(alice, SMALL)
    git = "git -c user.name=t -c user.email=t@t"
    sh(f"git init -q --bare -b main {root / 'team.git'}", root, env)
    sh(f"git init -q -b main && git remote add origin {root / 'team.git'} && {remote} && git add -A && "
       f"{git} commit -qm init && git push -q origin main", alice, env)
    first = sh(f"dvc exp run -n alice -S size={SIZE} generate", alice, env)
    sh("pas share", alice, env)
    return {"root": root, "alice": alice, "env": env, "first": first, "kind": request.param}


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("moto.server", reason="the test extra installs moto[server]")
    from moto_s3 import s3_server as serve_s3

    with serve_s3("team") as url:
        yield url


def clone(team: dict, name: str) -> Path:
    path = team["root"] / name
    sh(f"git clone -q {team['root'] / 'team.git'} {path}", team["root"], team["env"])
    sh("dvc pull --run-cache --allow-missing", path, team["env"])   # no committed lock: the run-cache only
    return path


def test_alice_rendered_and_embedded_once(team):
    done = work(team["first"])
    assert done["images_rendered"] == GENERATED and done["chunks_embedded"] == done["chunks"] > 0


def test_bob_renders_nothing_alice_rendered_and_ends_with_her_outputs(team):
    bob = clone(team, "bob")
    proc = sh(f"dvc exp run --pull -n bob -S size={SIZE} generate", bob, team["env"])
    log = proc.stdout + proc.stderr
    assert "generate: 0 images rendered" in log and "0 embedded" in log
    assert ran(proc) >= {"generate", "pool_index"}             # DVC runs them (persist outputs) ...
    done = work(proc)                                            # ... and they do no work
    assert (done["images_rendered"], done["images_restored"]) == (0, GENERATED)
    assert done["chunks_embedded"] == 0 and done["chunks_restored"] == done["chunks"]
    stages = ("generate", "pool_index", "retrieve", "sample_data", "concepts", "models")
    alice_lock = sh("git show refs/exps/$(git rev-parse HEAD | cut -c1-2)/$(git rev-parse HEAD | cut -c3-)/alice:dvc.lock",
                    team["alice"], team["env"]).stdout
    assert lock_outs((bob / "dvc.lock").read_text(), stages) == lock_outs(alice_lock, stages)
    team["bob"] = bob


def local_only(team: dict) -> None:
    """The size changes run on the local remote only (CI time): the store's S3 path is the one Bob's run took."""
    if team["kind"] != "local":
        pytest.skip("size changes are checked on the local remote")


def test_a_larger_size_renders_exactly_the_new_images(team):
    local_only(team)
    bob = team.get("bob") or pytest.skip("needs Bob's clone (the test above)")
    grown = sh(f"dvc exp run -n bob-grown -S size={SIZE + STEP} generate", bob, team["env"])
    assert "generate" in ran(grown)       # Alice's images are in Bob's shards already: he renders the new ones only
    assert (work(grown)["images_rendered"], work(grown)["images_restored"]) == (STEP // 2, 0)


def test_a_smaller_size_renders_nothing(team):
    local_only(team)
    carol = clone(team, "carol")
    proc = sh(f"dvc exp run --pull -n carol -S size={SIZE - STEP} generate", carol, team["env"])
    assert (work(proc)["images_rendered"], work(proc)["images_restored"]) == (0, GENERATED - STEP // 2)
    assert "generate: 0 images rendered" in proc.stdout + proc.stderr
