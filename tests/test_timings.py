"""Wall-clock figures stay out of the files DVC tracks (a fresh clone reproduces dvc.lock) and go to MLflow."""
from __future__ import annotations

import json
import sqlite3

import yaml

from pas.core.stage import run_stage, stage_parser
from pas.core.timings import split_timings


def test_timings_are_split_off_at_any_depth_and_every_key_lands_once():
    metrics = {"images": 40, "images_per_second": 3.2, "seconds": 9.0,
               "animals": {"pas": {"top1": 0.4, "linear_seconds": 1.5}, "timing_only": {"knn_seconds": 0.2}},
               "empty": {}}
    results, timings = split_timings(metrics)
    assert results == {"images": 40, "animals": {"pas": {"top1": 0.4}}, "empty": {}}
    assert timings == {"images_per_second": 3.2, "seconds": 9.0,
                       "animals": {"pas": {"linear_seconds": 1.5}, "timing_only": {"knn_seconds": 0.2}}}


def test_a_stage_writes_its_results_for_dvc_and_logs_its_timings_to_mlflow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"size": 10}))

    def body(args, params, run):
        return {"images_rendered": 10, "images_per_second": 123.4, "per_set": {"a": {"top1": 0.5, "seconds": 2.0}}}

    run_stage("probe", ("size",), stage_parser("probe", "probe"), body, ["--metrics-dir", "metrics"])
    written = json.loads((tmp_path / "metrics" / "probe.json").read_text())
    assert written == {"images_rendered": 10, "per_set": {"a": {"top1": 0.5}}}
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        logged = dict(db.execute("select key, value from metrics"))
    assert logged["images_per_second"] == 123.4 and logged["images_rendered"] == 10
    assert any(key.endswith("seconds") and value == 2.0 for key, value in logged.items())
