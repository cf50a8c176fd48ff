"""Stages pay only for what they use: pas.core and the stages whose work needs no model import no torch, MLflow or
other heavy library, and the stage runner sets MLflow up only after the stage's work began (checked in fresh
processes through sys.modules, never by timing)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from conftest import REPO

HEAVY = ("torch", "mlflow", "webdataset", "lightning", "timm", "open_clip", "diffusers", "faiss", "ray",
         "transformers")
CORE = sorted(path.stem for path in (REPO / "src" / "pas" / "core").glob("*.py") if path.stem != "__init__")
NO_MODEL_STAGES = ("concepts", "evaluate", "report", "sample_data", "summary")   # their work loads no model, trains nothing
# what a no-model stage may load: report's accounting imports pas.curation.dedup, whose neighbour search
# (pas.curation.neighbors, balance) imports faiss at the top (0.2 s, no model)
ALLOWED = {"report": ["faiss"]}
COMMAND_MODULES = ("pas.cli", "pas.evaluate.show", "pas.evaluate.costs")   # `pas show`, `pas plan`


def heavy_after(code: str, cwd=REPO) -> list[str]:
    """The HEAVY top-level packages in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("module", CORE)
def test_a_core_module_imports_nothing_heavy(module):
    assert heavy_after(f"import pas.core.{module}") == []


@pytest.mark.parametrize("stage", NO_MODEL_STAGES)
def test_a_stage_that_needs_no_model_imports_nothing_heavy(stage):
    script = REPO / "stages" / f"{stage}.py"      # its imports and definitions, not its __main__ block
    assert heavy_after(f"import runpy; runpy.run_path({str(script)!r}, run_name='import_check')") == \
        ALLOWED.get(stage, [])


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_the_pas_command_and_its_show_and_plan_import_nothing_heavy(module):
    assert heavy_after(f"import {module}") == []


def test_the_runner_sets_up_mlflow_once_after_the_work_began(tmp_path):
    """A stage body sees no MLflow loaded; the stage's run (with its params digest) appears afterwards, FINISHED,
    with the body's metrics and a start time from before the body ran."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = textwrap.dedent(f"""
        import json, sys, time
        from pas.core.stage import run_stage, stage_parser
        seen = {{}}
        def body(args, params, run):
            seen["heavy"] = sorted(m for m in {HEAVY!r} if m in sys.modules)
            seen["opened"] = getattr(run, "opened", None)
            seen["started_ms"] = time.time() * 1000
            return {{"probe": 1.5}}
        parser = stage_parser("probe", "probe: a stage body that only reports what it sees")
        run_stage("probe", (), parser, body, argv=["--metrics-dir", "metrics"])
        seen["mlflow_after"] = "mlflow" in sys.modules
        print(json.dumps(seen))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["heavy"] == [] and seen["opened"] is False and seen["mlflow_after"] is True
    assert json.loads((tmp_path / "metrics" / "probe.json").read_text()) == {"probe": 1.5}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(f"pas-{yaml.safe_load((REPO / 'params.yaml').read_text())['domain']}")
    runs = client.search_runs([experiment.experiment_id])
    (stage,) = [r for r in runs if r.data.tags.get("pas.stage") == "probe"]
    (parent,) = [r for r in runs if r.data.tags.get("pas.kind") == "pipeline"]
    assert stage.info.status == parent.info.status == "FINISHED" and stage.data.metrics == {"probe": 1.5}
    assert stage.data.tags["pas.params_digest"] == parent.data.tags["pas.params_digest"]
    assert stage.info.start_time <= seen["started_ms"] and parent.info.start_time <= seen["started_ms"]


def test_a_stage_that_fails_before_logging_still_gets_its_failed_run(tmp_path):
    """MLflow opened only by the failure: the run is FAILED and says why, as when it was opened up front."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = textwrap.dedent("""
        from pas.core.stage import run_stage, stage_parser
        def body(args, params, run):
            raise FileNotFoundError("no such file or folder: gone.json")
        run_stage("probe", (), stage_parser("probe", "probe: a stage body that fails"), body, argv=[])
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        "pas probe: error: no such file or folder: gone.json"), done.stderr

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (stage,) = [r for r in runs if r.data.tags.get("pas.stage") == "probe"]
    assert stage.info.status == "FAILED" and "gone.json" in stage.data.tags["pas.error"]


def git_repo(path, params: dict) -> None:
    """`path` as a one-commit git repository holding dvc.yaml and `params` as params.yaml."""
    (path / "dvc.yaml").write_text("stages: {}\n")
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "params"]):
        subprocess.run(cmd, cwd=path, check=True, capture_output=True)


def test_pas_show_reads_params_and_mlflow_without_dvc_or_mlflow(tmp_path, monkeypatch):
    """pas show on a workspace: the params diff against HEAD and the newest finished pipeline run of these params,
    with no dvc process started and no MLflow (or other heavy library) imported."""
    from mlflow.tracking import MlflowClient

    from pas.core.provenance import params_digest
    from pas.core.tracking import PARAMS_DIGEST_TAG

    git_repo(tmp_path, {"size": 300, "domain": "birds", "pretrain": {"epochs": 2, "inits": ["a", "b"]}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(   # same size as before: git's index may think it unchanged
        {"size": 400, "domain": "birds", "pretrain": {"epochs": 3, "inits": ["a", "c"]}}, sort_keys=False))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "summary.json").write_text(json.dumps({"curated": 400, "top1.pas.linear": 0.5}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("pas-birds")
    digest = params_digest(yaml.safe_load((tmp_path / "params.yaml").read_text()))
    for name, tags, status in (("old-run", {PARAMS_DIGEST_TAG: digest}, "FINISHED"),
                               ("newer-other", {PARAMS_DIGEST_TAG: "0123456789ab"}, "FINISHED"),
                               ("newest-failed", {PARAMS_DIGEST_TAG: digest}, "FAILED")):
        run = client.create_run(exp, run_name=name, tags={"pas.kind": "pipeline", **tags})
        client.set_terminated(run.info.run_id, status)
    code = "from pas.cli import main\nassert main(['show']) == 0\n"
    probe = f"{code}import json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} + ('dvc.repo',) if m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stderr
    page, loaded = done.stdout.rsplit("\n", 2)[0], json.loads(done.stdout.splitlines()[-1])
    assert loaded == []
    assert "  pretrain.epochs: 2 -> 3\n  pretrain.inits: \"['a', 'b']\" -> \"['a', 'c']\"\n  size: 300 -> 400" in page
    assert "(old-run) in " in page and "may be another's" not in page


def test_the_workspace_params_diff_is_dvcs(tmp_path, monkeypatch):
    """pas show's own params diff equals `dvc params diff --json` on nested, list, added and removed keys."""
    from pas.evaluate.show import workspace_params_changed

    git_repo(tmp_path, {"size": 300, "lr": 1e-4, "gone": 1, "nested": {"a": {"b": [1, 2]}, "c": "x"}, "same": [1]})
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "params.yaml").write_text("size: 300\nlr: 0.00001\nnested: {a: {b: [1, 3]}, c: y}\nsame: [1]\n"
                                          "new: {k: true}\n")
    done = subprocess.run([sys.executable, "-m", "dvc", "params", "diff", "--json"], cwd=tmp_path,
                          capture_output=True, text=True, check=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    expected = {key: (change.get("old"), change.get("new"))
                for changes in json.loads(done.stdout).values() for key, change in sorted(changes.items())}
    monkeypatch.chdir(tmp_path)
    assert workspace_params_changed() == expected and set(expected) == {"lr", "gone", "nested.a.b", "nested.c", "new.k"}


def test_pas_show_reads_a_sqlite_store_as_mlflow_searches_it(tmp_path):
    """newest_in_sqlite answers what MlflowClient.search_runs answers: deleted runs and
    experiments, other statuses, tags and experiments outside pas left out, newest start first."""
    from mlflow.tracking import MlflowClient

    from pas.evaluate.show import newest_in_sqlite, newest_through_mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    pas_exp, other, gone = (client.create_experiment(name) for name in ("pas-birds", "other", "pas-gone"))
    made = {}
    for i, (exp, name, tags, status) in enumerate((
            (pas_exp, "a", {"d": "1"}, "FINISHED"), (pas_exp, "b", {"d": "1", "e": "x"}, "FINISHED"),
            (pas_exp, "c", {"d": "2"}, "FINISHED"), (pas_exp, "deleted", {"d": "1"}, "FINISHED"),
            (other, "outside", {"d": "1"}, "FINISHED"), (gone, "in-deleted", {"d": "1"}, "FINISHED"),
            (pas_exp, "failed", {"d": "1"}, "FAILED"))):
        run = client.create_run(exp, run_name=name, start_time=1000 + i, tags={"pas.kind": "pipeline", **tags})
        client.set_terminated(run.info.run_id, status)
        made[name] = run.info.run_id
    client.delete_run(made["deleted"])
    client.delete_experiment(gone)
    for tags, name in (({"d": "1"}, "b"), ({}, "c"), ({"d": "1", "e": "x"}, "b"), ({"d": "3"}, None)):
        wanted = {"pas.kind": "pipeline", **tags}
        assert newest_in_sqlite(tmp_path / "mlflow.db", wanted) == newest_through_mlflow(uri, wanted) \
            == (None if name is None else (made[name], name))


def test_pas_plan_checks_the_params_without_the_stages_machinery():
    """pas plan checks every section with the stages' own config classes, but loads neither the indexing nor the
    CLIP code (faiss index builders, open_clip) nor torch, timm, Lightning, MLflow or the generators: the SSL methods'
    Args (pas.ssl.args), finetune's config (pas.transfer.config) and timm's architecture names
    (pas.models.timm_archs) are torch-free, and the finetune row's FLOPs come from benchmarks/throughput.json."""
    unwanted = ("pas.sources.pool_index", "pas.ssl.module", "torch", "timm", "lightning", "mlflow", "open_clip",
                "diffusers", "transformers", "webdataset", "ray")
    code = (f"from pas.cli import main\nassert main(['plan']) == 0\nimport json, sys\n"
            f"print(json.dumps(sorted(m for m in {unwanted!r} if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr      # plan reads params.yaml and benchmarks/, writes nothing
    assert json.loads(done.stdout.splitlines()[-1]) == []
