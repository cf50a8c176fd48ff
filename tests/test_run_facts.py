"""Run facts (timings, counts of work done) stay out of the files DVC tracks and go to MLflow: a fresh clone, or a
colleague who restores the team's work, ends with the same dvc.lock."""
from __future__ import annotations

import json
import sqlite3

import yaml

from pas.core.run_facts import split_run_facts
from pas.core.stage import run_stage, stage_parser


def test_run_facts_are_split_off_at_any_depth_and_every_key_lands_once():
    metrics = {"images": 40, "images_rendered": 40, "images_restored": 0, "images_per_second": 3.2, "seconds": 9.0,
               "downloads": {"downloaded": 7, "urls_downloaded": 7, "urls_restored": 0},
               "animals": {"pas": {"top1": 0.4, "linear_seconds": 1.5}, "timing_only": {"knn_seconds": 0.2}},
               "empty": {}}
    results, facts = split_run_facts(metrics)
    assert results == {"images": 40, "downloads": {"downloaded": 7}, "animals": {"pas": {"top1": 0.4}}, "empty": {}}
    assert facts == {"images_rendered": 40, "images_restored": 0, "images_per_second": 3.2, "seconds": 9.0,
                     "downloads": {"urls_downloaded": 7, "urls_restored": 0},
                     "animals": {"pas": {"linear_seconds": 1.5}, "timing_only": {"knn_seconds": 0.2}}}


def test_a_stage_writes_its_results_for_dvc_and_logs_its_run_facts_to_mlflow(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"size": 10}))

    def body(args, params, run):
        return {"images": 10, "images_rendered": 10, "images_per_second": 123.4,
                "per_set": {"a": {"top1": 0.5, "seconds": 2.0}}}

    run_stage("probe", ("size",), stage_parser("probe", "probe"), body, ["--metrics-dir", "metrics"])
    written = json.loads((tmp_path / "metrics" / "probe.json").read_text())
    assert written == {"images": 10, "per_set": {"a": {"top1": 0.5}}}
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        logged = dict(db.execute("select key, value from metrics"))
    assert logged["images_per_second"] == 123.4 and logged["images_rendered"] == 10
    assert any(key.endswith("seconds") and value == 2.0 for key, value in logged.items())
