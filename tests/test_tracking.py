import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pas.core.tracking import stage_run


@pytest.fixture
def tracking_db(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_stages_of_one_execution_nest_under_one_parent(tracking_db):
    with stage_run("concepts", {"concepts": {"count": 3}}, "pas-test") as run:
        run.log_metrics({"concepts": 3, "nested": {"a": 1.5}, "text": "ignored"})
    with stage_run("generate", {"size": 10}, "pas-test") as run:
        run.log_metrics({"images": 10})
    client = MlflowClient(tracking_uri=tracking_db)
    exp = client.get_experiment_by_name("pas-test")
    runs = client.search_runs([exp.experiment_id])
    stages = {r.info.run_name: r for r in runs if "pas.stage" in r.data.tags}
    parents = [r for r in runs if r.data.tags.get("pas.kind") == "pipeline"]
    assert set(stages) == {"concepts", "generate"} and len(parents) == 1
    assert {r.data.tags["mlflow.parentRunId"] for r in stages.values()} == {parents[0].info.run_id}
    assert stages["concepts"].data.params["concepts.count"] == "3"
    assert stages["concepts"].data.metrics == {"concepts": 3.0, "nested.a": 1.5}
    assert stages["generate"].info.status == "FINISHED"


def test_failed_stage_is_marked_failed(tracking_db):
    with pytest.raises(RuntimeError, match="^boom$"):
        with stage_run("dedup", {}, "pas-test"):
            raise RuntimeError("boom")
    client = MlflowClient(tracking_uri=tracking_db)
    exp = client.get_experiment_by_name("pas-test")
    (run,) = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "dedup"]
    assert run.info.status == "FAILED"


def test_curated_dataset_is_an_input_of_the_stage_and_pipeline_runs(tracking_db, tmp_path):
    import hashlib

    from pas.core.tracking import dataset_record

    manifest = tmp_path / "manifest.parquet"
    manifest.write_bytes(b"not really parquet, but bytes with a known md5")
    record = dataset_record("curated", manifest)
    assert record["md5"] == hashlib.md5(manifest.read_bytes()).hexdigest()   # what dvc.lock holds for the file
    with stage_run("pretrain", {}, "pas-test") as run:
        run.log_input_dataset(record)
    client = MlflowClient(tracking_uri=tracking_db)
    exp = client.get_experiment_by_name("pas-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2                                                      # the stage run and its pipeline run
    for found in runs:
        (dataset_input,) = found.inputs.dataset_inputs
        assert dataset_input.dataset.name == "curated" and dataset_input.dataset.digest == record["md5"]
        assert str(manifest) in dataset_input.dataset.source
        assert {(t.key, t.value) for t in dataset_input.tags} == {("mlflow.data.context", "training")}


def test_queued_experiments_log_into_the_repository_store(tmp_path, monkeypatch):
    from pas.core.mlflow_store import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workspace = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmp1a2b3c"
    assert tracking_uri(workspace) == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
    assert tracking_uri(workspace / "sub") == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
    assert tracking_uri(tmp_path / "repo") == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking_uri(workspace) == "http://mlflow:5000"


def git_repo(root, monkeypatch):
    """A committed git repository with a .dvc folder at `root`, made the working directory."""
    import subprocess

    (root / ".dvc").mkdir(parents=True)
    (root / "params.yaml").write_text("size: 10\n")
    for cmd in ("git init -q", "git add params.yaml", "git -c user.name=t -c user.email=t@t commit -qm init"):
        subprocess.run(cmd, shell=True, cwd=root, check=True)
    monkeypatch.chdir(root)
    for name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()


def pipeline_runs(uri, experiment="pas-test"):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("pas.kind") == "pipeline"]
    return client, exp, parents, {r.info.run_name: r for r in runs if "pas.stage" in r.data.tags}


KEY_PARAMS = {"size": 300, "seed": 0, "domain": "birds", "mix": {"generated": 0.5, "retrieved": 0.5},
              "models": {"generator": "tiny://sd", "clip": "tiny://clip"},
              "pretrain": {"method": "dino", "backbone": "resnet18", "budget": 5000}}


def test_the_pipeline_run_carries_key_params_commit_and_opens_in_the_training_view(tracking_db, tmp_path,
                                                                                     monkeypatch):
    commit = git_repo(tmp_path / "repo", monkeypatch)
    with stage_run("generate", {"size": 300}, "pas-test", KEY_PARAMS):
        pass
    with stage_run("pretrain", {"seed": 0}, "pas-test", {**KEY_PARAMS, "size": 999}):   # parent already made
        pass
    client, exp, (parent,), stages = pipeline_runs(tracking_db)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.data.params == {"size": "300", "seed": "0", "domain": "birds", "mix.generated": "0.5",
                                  "mix.retrieved": "0.5", "models.generator": "tiny://sd", "models.clip": "tiny://clip",
                                  "pretrain.method": "dino", "pretrain.backbone": "resnet18", "pretrain.budget": "5000"}
    found = client.search_runs([exp.experiment_id], "params.`pretrain.method` = 'dino' and params.size = '300'")
    assert [r.info.run_id for r in found] == [parent.info.run_id]      # the runs table filters experiments by them
    for run in (parent, *stages.values()):
        assert run.data.tags["mlflow.source.git.commit"] == commit
        assert run.data.tags["pas.git.dirty"] == "false"
        assert "dvc.exp_name" not in run.data.tags


def test_an_experiment_is_tagged_with_its_dvc_name_baseline_and_dirty_tree(tracking_db, tmp_path, monkeypatch):
    git_repo(tmp_path / "repo", monkeypatch)
    (tmp_path / "repo" / "params.yaml").write_text("size: 20\n")        # what `dvc exp run -S size=20` does
    monkeypatch.setenv("DVC_EXP_NAME", "sweep-20")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0123456789abcdef0123456789abcdef01234567")
    with stage_run("generate", {}, "pas-test"):
        pass
    _, _, (parent,), _ = pipeline_runs(tracking_db)
    assert parent.info.run_name == "sweep-20"
    assert {k: parent.data.tags[k] for k in ("dvc.exp_name", "mlflow.source.git.commit", "pas.git.dirty")} == {
        "dvc.exp_name": "sweep-20", "mlflow.source.git.commit": "0123456789abcdef0123456789abcdef01234567",
        "pas.git.dirty": "true"}


def test_headline_metrics_are_copied_onto_the_pipeline_run(tracking_db):
    metrics = {"shapes": {"pas": {"linear": {"top1": 0.5, "per_class": {"cat": 0.4}}},
                          "gain": {"random": {"linear": 0.1}}}}
    with stage_run("evaluate", {}, "pas-test") as run:
        run.log_metrics(metrics)
        run.log_parent_metrics(metrics, keep=lambda key: key.endswith(".top1") or ".gain." in key)
    _, _, (parent,), stages = pipeline_runs(tracking_db)
    assert parent.data.metrics == {"shapes.pas.linear.top1": 0.5, "shapes.gain.random.linear": 0.1}
    assert stages["evaluate"].data.metrics["shapes.pas.linear.per_class.cat"] == 0.4


def test_a_failed_stage_records_its_error_on_its_run_and_the_pipeline_run(tracking_db):
    from pas.core.config import ConfigError

    with pytest.raises(ConfigError, match="pretrain.lr"), stage_run("pretrain", {}, "pas-test"):
        raise ConfigError("pretrain.lr=-1 is not allowed; use a number > 0")
    _, _, (parent,), stages = pipeline_runs(tracking_db)
    for run in (parent, stages["pretrain"]):
        assert run.info.status == "FAILED"
        assert run.data.tags["pas.error"] == "pretrain: ConfigError: pretrain.lr=-1 is not allowed; use a number > 0"


def test_only_the_chosen_methods_arguments_are_logged(tracking_db):
    params = {"seed": 0, "pretrain": {"method": "simclr", "lr": 0.001, "method_args": {
        "simclr": {"temperature": 0.2, "proj_dim": 128}, "dino": {"out_dim": 4096}}}}
    with stage_run("pretrain", params, "pas-test"):
        pass
    _, _, _, stages = pipeline_runs(tracking_db)
    logged = stages["pretrain"].data.params
    assert {k for k in logged if "method_args" in k} == {"pretrain.method_args.simclr.temperature",
                                                          "pretrain.method_args.simclr.proj_dim"}
    assert logged["pretrain.lr"] == "0.001" and logged["pretrain.method"] == "simclr"


def test_a_queued_experiments_dataset_input_names_the_path_inside_the_repository(tracking_db, tmp_path, monkeypatch):
    from pas.core.tracking import dataset_record

    workspace = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    (workspace / ".dvc").mkdir(parents=True)
    (workspace / "data" / "curated").mkdir(parents=True)
    (workspace / "data" / "curated" / "manifest.parquet").write_bytes(b"rows")
    monkeypatch.chdir(workspace)
    with stage_run("pretrain", {}, "pas-test") as run:
        run.log_input_dataset(dataset_record("curated", "data/curated/manifest.parquet"))
    _, _, (parent,), _ = pipeline_runs(tracking_db)
    (dataset_input,) = parent.inputs.dataset_inputs
    assert json.loads(dataset_input.dataset.source) == {"uri": "data/curated/manifest.parquet"}


def test_a_copied_repository_logs_artifacts_into_its_own_folder(tmp_path, monkeypatch):
    import shutil

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)        # the repository's own mlflow.db
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    (original / "report.md").write_text("first")
    monkeypatch.chdir(original)
    with stage_run("report", {}, "pas-test") as run:
        run.log_artifact("report.md")
    shutil.copytree(original, copy)
    monkeypatch.chdir(copy)
    (copy / "report.md").write_text("second")
    with stage_run("report", {}, "pas-test") as run:
        run.log_artifact("report.md")
    client = MlflowClient(tracking_uri=f"sqlite:///{copy / 'mlflow.db'}")
    exp = client.get_experiment_by_name("pas-test")
    assert exp.artifact_location.startswith(str(copy / "mlruns"))
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "report"]
    assert len(runs) == 2 and all(r.info.artifact_uri.startswith(str(copy / "mlruns")) for r in runs)
    texts = sorted(Path(client.download_artifacts(r.info.run_id, "report.md", str(tmp_path / r.info.run_id)))
                   .read_text() for r in runs)
    assert texts == ["first", "second"]                  # the copied history is readable from the copy
    assert [p.read_text() for p in original.glob("mlruns/*/*/artifacts/report.md")] == ["first"]
