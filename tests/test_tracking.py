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
    from pas.core.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workspace = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmp1a2b3c"
    assert tracking_uri(workspace) == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
    assert tracking_uri(workspace / "sub") == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
    assert tracking_uri(tmp_path / "repo") == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking_uri(workspace) == "http://mlflow:5000"
