"""End to end: the offline default `dvc repro` in a temporary copy of the repository (slow)."""
from __future__ import annotations

import csv
import json
import math
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from dvc_repo import copy_sources, ran, run
from pas.core.config import MixConfig
from pas.sources.plan import candidate_counts

pytestmark = pytest.mark.slow

UPSTREAM_OF_FILTER = ("models", "concepts", "generate", "sample_data", "pool_index", "retrieve", "embed")


def restore_params(repo: Path) -> None:
    """Put HEAD's params.yaml back by content, so a case never inherits the one before it.

    `git checkout params.yaml` is not enough after a failed workspace `dvc exp run`: DVC rewrites params.yaml
    several times within one second (apply the -S overrides, stash, reset --hard, apply the stash), and its git
    back ends leave an index entry holding HEAD's blob with the stat data (whole-second mtime, size, inode) of the
    rewritten file. `-S models.generator=tiny://nope` keeps the file's size (the comment after the value is
    re-aligned), so git's stat check sees no change: `git status` is clean and `git checkout` does nothing, and the
    next case ran with tiny://nope. Writing HEAD's bytes does not trust the index.
    """
    head = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=repo, capture_output=True, check=True).stdout
    (repo / "params.yaml").write_bytes(head)
    run("git update-index -q --refresh", repo, check=False)
    assert (repo / "params.yaml").read_bytes() == head


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A fresh git repository holding the working tree's source files (no outputs, no cache).

    The committed results (dvc.lock, metrics/, plots/) are left out too, so every stage runs and
    logs here; that a clean clone *with* them reproduces is what `.ci/run` checks.
    """
    dest = copy_sources(tmp_path_factory.mktemp("pas") / "repo")
    run("git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm init", dest)
    return dest


@pytest.fixture(scope="module")
def reproduced(repo) -> subprocess.CompletedProcess:
    """The offline default reproduced once in the module's repository: any test of this module can run alone
    (`pytest tests/test_pipeline_e2e.py::NAME`) and finds the pipeline's outputs. Its dvc.lock is kept beside the
    repository, so a case can start from the reproduced state (restore_reproduced)."""
    done = run("dvc repro", repo)
    shutil.copyfile(repo / "dvc.lock", repo.parent / "reproduced.lock")
    return done


def restore_reproduced(repo: Path) -> None:
    """The reproduced dvc.lock and its outputs back in the workspace (from DVC's cache), HEAD's params.yaml too: a
    case that counts the stages its `dvc exp run` reruns must not inherit what an earlier case's experiment left."""
    restore_params(repo)
    shutil.copyfile(repo.parent / "reproduced.lock", repo / "dvc.lock")
    run("dvc checkout -f -q", repo)


def curated_rows(repo: Path) -> int:
    return pq.read_metadata(repo / "data/curated/manifest.parquet").num_rows


def test_repro_runs_the_whole_dag_offline(repo, reproduced):
    assert ran(reproduced) == set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    size = yaml.safe_load((repo / "params.yaml").read_text())["size"]
    assert curated_rows(repo) == size
    evaluation = yaml.safe_load((repo / "metrics/eval.json").read_text())
    for init in ("pas", "random"):
        classes = len(evaluation["animal_shapes"][init]["linear"]["per_class"])
        assert evaluation["animal_shapes"][init]["linear"]["top1"] > 2 / classes      # well above chance
        assert evaluation["animal_shapes"][init]["knn"]["top1"] > 2 / classes
    for folder in ("data/filtered", "data/curated"):               # manifests only: never copies of images
        copies = [p for p in (repo / folder).rglob("*") if p.suffix in (".jpg", ".jpeg", ".png", ".tar")]
        assert (repo / folder / "manifest.parquet").is_file() and copies == []
    summary = evaluation["summary"]               # same-architecture comparison, oracle concepts said out loud
    assert set(summary["architectures"].values()) == {"tf_efficientnet_lite0"} and "mixed_architecture" not in summary
    assert summary["oracle_concepts"] is True and summary["concept_overlap"]["animal_shapes"]["named"] == classes
    report = (repo / "metrics/eval.md").read_text()
    assert "**ORACLE CONCEPTS: the shipped concept bank names 10 of 10 classes of animal_shapes" in report
    assert "CONFOUNDED" not in report and "Warning:** images come from random-weight tiny models" in report
    shapes = evaluation["animal_shapes"]           # real ImageNet weights beat a random init of their architecture
    assert shapes["imagenet"]["linear"]["top1"] > shapes["random"]["linear"]["top1"]
    with sqlite3.connect(repo / "mlflow.db") as db:
        stages = {name for (name,) in db.execute("select value from tags where key = 'pas.stage'")}
        parents = db.execute("select count(*) from tags where key = 'pas.kind' and value = 'pipeline'").fetchone()[0]
        datasets = set(db.execute("select name, digest from datasets"))
        honesty = set(db.execute("select key, value from tags where key in ('pas.concepts', 'pas.comparison')"))
    assert honesty == {("pas.concepts", "oracle concepts (the shipped bank names downstream classes)"),
                       ("pas.comparison", "same architecture")}      # on the evaluate run and the pipeline run
    assert {"models", "pretrain", "evaluate"} <= stages and parents == 1
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    (curated,) = [out["md5"] for out in lock["stages"]["dedup"]["outs"]
                  if out["path"] == "data/curated/manifest.parquet"]
    assert datasets == {("curated", curated)}       # MLflow's input dataset is the manifest DVC tracks


def test_pas_show_is_one_page_of_the_workspace(repo, reproduced):
    page = run("pas show", repo).stdout
    assert page.startswith("pas show: workspace") and "Params that differ from HEAD:\n  none" in page
    assert "-> 300 curated" in page and "top-1 %" in page and "\n  pas  " in page
    assert "MLflow: run " in page and "reports/dataset.html" in page and len(page.splitlines()) <= 40
    shown = json.loads(run("dvc exp show --json", repo).stdout)    # exp show: the summary, not 500 detail columns
    assert list(shown[0]["data"]["metrics"]) == ["metrics/summary.json"]
    assert len(shown[0]["data"]["metrics"]["metrics/summary.json"]["data"]) <= 24


def test_second_repro_does_nothing(repo, reproduced):
    proc = run("dvc repro", repo)
    assert ran(proc) == set() and "Data and pipelines are up to date" in proc.stdout


def test_push_delete_pull_restores_everything(repo, reproduced, tmp_path):
    run(f"dvc remote add -f -d shared {tmp_path / 'remote'} && dvc push", repo)
    shutil.rmtree(repo / ".dvc" / "cache")
    for out in ("data/generated", "data/curated", "data/pool", "models/clip", "data/pretrain", "data/finetune"):
        shutil.rmtree(repo / out)
    run("dvc pull", repo)
    assert curated_rows(repo) == yaml.safe_load((repo / "params.yaml").read_text())["size"]
    proc = run("dvc repro", repo)
    assert ran(proc) == set()


def test_queued_size_sweep_then_compare_gives_a_row_per_size_and_a_plot(repo, reproduced, tmp_path):
    """The paper's scaling figure in miniature: sizes queued, run in DVC's temp workspaces, compared.

    400 runs after the size-300 baseline, then 300 again after 400: DVC's run cache ignores params named
    `size` (treeverse/dvc#10296), so every stage that reads size must produce its own size's output (the
    `--size ${size}` in its command), and the second 300 may only restore the 300 run.
    """
    # commit the baseline results first, as a user would: queued runs start from the committed dvc.lock
    run("git add -A && git commit -qm baseline", repo)
    # at equal compute: every size pretrains on the same 640 images (pretrain.budget), as DataComp does
    run("dvc exp run --queue -S size=400 -S pretrain.budget=640 && dvc exp run --queue -S size=300 "
        "-S pretrain.budget=640", repo)
    proc = run("dvc exp run --run-all", repo)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not ran(proc) & {"models", "concepts", "sample_data", "pool_index"}   # the baseline's, from the cache
    shown = json.loads(run("dvc exp show --json", repo).stdout)
    revs = [rev["data"] for baseline in shown for exp in baseline.get("experiments") or [] for rev in exp["revs"]]
    assert sorted(data["params"]["params.yaml"]["data"]["size"] for data in revs) == [300, 400]
    # the one DVC metric is the summary: dvc exp show lists its ~20 numbers, not every stage's details
    assert {tuple(data["metrics"]) for data in revs} == {("metrics/summary.json",)}
    params = yaml.safe_load((repo / "params.yaml").read_text())
    seen = {(data["params"]["params.yaml"]["data"]["size"],
             *(data["metrics"]["metrics/summary.json"]["data"][key]
               for key in ("generated", "retrieved", "candidates", "curated")))
            for data in revs}
    expected = set()
    for size in (300, 400):
        planned = candidate_counts(size, params["oversample"], MixConfig(**params["mix"]))
        expected.add((size, planned["generated"], planned["retrieved"], sum(planned.values()), size))
    assert seen == expected, proc.stdout[-4000:]
    out = tmp_path / "compare"
    run(f"pas compare --out {out}", repo)     # queued runs logged into the repository's mlflow.db
    with open(out / "compare.csv") as handle:
        rows = list(csv.DictReader(handle))
    names = {rev["name"] for baseline in shown for exp in baseline.get("experiments") or [] for rev in exp["revs"]}
    sweep = [row for row in rows if row["exp_name"] in names]
    assert {int(row["size"]) for row in sweep} == {300, 400}
    assert {row["init"] for row in sweep} >= {"pas", "random"}
    assert {(row["budget"], row["images_seen"]) for row in sweep} == {("640", "640")}   # equal images seen
    # the baseline `dvc repro` (fixed epochs, another params file) is its own point, beside the sweep
    assert {(row["size"], row["budget"]) for row in rows if row["exp_name"] not in names} == {("300", "epochs")}
    assert (out / "compare.png").read_bytes().startswith(b"\x89PNG")
    table = (out / "compare.md").read_text()
    assert "| 400 | simclr | tf_efficientnet_lite0 |" in table and "| 640 | 640 |" in table
    assert "Unequal compute" in table          # the epochs baseline trained on other images than the sweep
    (name,) = [rev["name"] for baseline in shown for exp in baseline.get("experiments") or [] for rev in exp["revs"]
               if rev["data"]["params"]["params.yaml"]["data"]["size"] == 400]
    page = run(f"pas show {name}", repo).stdout                   # one page for that experiment
    assert "size: 300 -> 400" in page and "pretrain.budget: 0 -> 640" in page
    assert "-> 400 curated" in page and "pretrained on 640 images seen" in page and "ORACLE CONCEPTS" in page


def test_a_web_pool_downloads_only_its_hits_and_curates_exactly_size(repo, reproduced, tmp_path, tiny_models):
    """A pool of precomputed embeddings whose images are only URLs on a local HTTP server: dvc retrieves,
    downloads the chosen hits through img2dataset, replaces the failures, and dedup curates exactly `size`."""
    from test_web_pool import BAD, GOOD, ImageServer, fetched, web_pool

    server = ImageServer()
    try:
        web_pool(tmp_path / "web", server, tiny_models["clip"])
        run("git add -A && git commit -qm 'before the web pool' --allow-empty", repo)
        run(f"dvc exp run --temp -n webpool -S pool_index.source={tmp_path / 'web'} -S size=40 -S mix.retrieved=0.25 "
            "dedup", repo)
    finally:
        server.close()
    shown = json.loads(run("dvc exp show --json", repo).stdout)
    (rev,) = [rev for baseline in shown for exp in baseline.get("experiments") or [] for rev in exp["revs"]
              if rev.get("name") == "webpool"]

    def stage_metrics(name):   # a stage's detail file: a cached output of the experiment (not a DVC metric)
        import dvc.api

        return json.loads(dvc.api.read(f"metrics/{name}.json", repo=str(repo), rev=rev["rev"]))

    retrieved, pool = stage_metrics("retrieve"), stage_metrics("pool_index")
    assert pool["kind"] == "embeddings" and pool["indexed"] == GOOD + BAD
    assert retrieved["images"] == retrieved["requested"] and retrieved["downloads"]["downloaded"] >= retrieved["images"]
    assert stage_metrics("dedup")["curated"] == 40
    assert sum(fetched(server).values()) < GOOD + BAD                   # only hits were fetched, not the pool


def test_filter_threshold_change_reruns_only_filter_and_below(repo, reproduced):
    # Targeting `dedup` keeps CI short; that DVC reruns everything below a changed stage is DVC's job.
    try:
        proc = run("dvc exp run -S filter.threshold=-0.9999 dedup", repo)
    finally:
        restore_params(repo)
    assert {"filter", "dedup"} <= ran(proc)
    assert not ran(proc) & set(UPSTREAM_OF_FILTER)


@pytest.mark.parametrize("override, message", [
    ("size=abc", "size='abc' is not a size; use an integer"),
    ("models.generator=tiny://nope", "models.generator='tiny://nope': unknown tiny model"),
    ("+generate.stepz=3", "unknown key generate.stepz"),  # `+` adds a key DVC does not know yet
])
def test_bad_params_fail_with_one_clear_line(repo, override, message):
    restore_params(repo)                        # whatever ran before, each case starts from HEAD's params
    try:
        proc = run(f"dvc exp run -S {override}", repo, check=False)
    finally:
        restore_params(repo)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if message in line]
    assert lines and all("Traceback" not in line for line in lines), proc.stderr[-2000:]


def test_missing_pool_folder_fails_naming_it(repo):
    try:
        proc = run("dvc exp run -S pool_index.source=data/no_such_pool", repo, check=False)
    finally:
        restore_params(repo)
    assert proc.returncode != 0 and "data/no_such_pool" in proc.stdout + proc.stderr


def test_hkmeans_balance_runs_from_exp_run_and_the_report_plots_it(repo, reproduced):
    """`-S dedup.balance=hkmeans` reruns dedup and report only: exactly `size` curated, cluster sizes plotted."""
    restore_reproduced(repo)                    # counted below: start from the reproduced state
    try:
        proc = run("dvc exp run -S dedup.balance=hkmeans report", repo)
    finally:
        restore_params(repo)
    assert ran(proc) == {"dedup", "report"}
    dedup, report = (json.loads((repo / f"metrics/{name}.json").read_text()) for name in ("dedup", "report"))
    size = yaml.safe_load((repo / "params.yaml").read_text())["size"]
    assert dedup["balance"] == "hkmeans" and dedup["curated"] == size == curated_rows(repo)
    assert report["balance"]["mode"] == "hkmeans" and report["balance"]["groups"] == "cluster"
    assert (repo / "reports/dataset/balance.png").is_file()


def test_stablerep_pretrains_on_prompt_groups_from_exp_run(repo, reproduced):
    """`-S pretrain.method=stablerep` reruns pretrain only, on groups of a prompt's generated images (one step)."""
    restore_reproduced(repo)                    # counted below: start from the reproduced state
    try:
        proc = run("dvc exp run -S pretrain.method=stablerep -S pretrain.max_steps=1 -S pretrain.batch_size=16 "
                   "-S pretrain.knn_images=100 pretrain", repo)
    finally:
        restore_params(repo)
    assert ran(proc) == {"pretrain"}
    card = json.loads((repo / "data/pretrain/model_card.json").read_text())
    assert card["method"] == "stablerep" and card["steps"] == 1
    grouped = card["derived"]["prompt_groups"]   # siblings share groups: fewer groups than images
    assert grouped["views_per_group"] == 6 and grouped["groups"] < grouped["images"] == curated_rows(repo)
    assert math.isfinite(json.loads((repo / "metrics/pretrain.json").read_text())["loss_last_epoch"])
