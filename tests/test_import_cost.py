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
NO_MODEL_STAGES = ("concepts", "evaluate", "sample_data", "summary")   # their work loads no model, trains nothing
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
    assert heavy_after(f"import runpy; runpy.run_path({str(script)!r}, run_name='import_check')") == []


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
