"""metrics/summary.json: the headline numbers a team compares experiments by, and `pas show`'s page of them."""
from __future__ import annotations

import json

import pytest

from pas.evaluate.show import funnel_lines, metric_lines
from pas.evaluate.summary import STAGES, headline, read_stage_metrics

STAGE_METRICS = {
    "generate": {"images": 120, "shards": 1}, "retrieve": {"images": 80, "requested": 80},
    "filter": {"candidates": 200, "kept": 150}, "pretrain": {"images_seen": 4096, "steps": 64},
    "dedup": {"duplicates_removed": 20, "contaminated_removed": 5, "curated": 100, "real_share": 103 / 300},
    "eval": {"birds": {"pas": {"linear": {"top1": 0.6}, "knn": {"top1": 0.5}},
                       "imagenet": {"linear": {"top1": 0.4}, "knn": {"top1": 0.3}}, "gain": {}},
             "food": {"pas": {"linear": {"top1": 0.8}}, "imagenet": {"linear": {"top1": 0.7}}, "gain": {}},
             "summary": {"reference": "pas", "gain": {"imagenet": {"linear": 0.15, "knn": 0.2}},
                         "oracle_concepts": True}},
}


def test_headline_is_the_funnel_compute_mean_top1_and_gains():
    summary = headline(STAGE_METRICS)
    assert (summary["generated"], summary["retrieved"], summary["candidates"], summary["kept_by_filter"],
            summary["curated"], summary["real_share"]) == (120, 80, 200, 150, 100, 0.3433)   # 4 places
    assert summary["pretrain_images_seen"] == 4096
    assert summary["top1.pas.linear"] == pytest.approx(0.7)        # mean over birds and food
    assert summary["top1.pas.knn"] == pytest.approx(0.5)           # only birds has knn
    assert summary["top1.imagenet.linear"] == pytest.approx(0.55)
    assert summary["gain.imagenet.linear"] == pytest.approx(0.15) and "gain.imagenet.knn" not in summary
    assert (summary["oracle_concepts"], summary["mixed_architecture"]) == (1, 0)
    assert len(summary) <= 24 and all(isinstance(v, (int, float)) for v in summary.values())


def test_show_renders_the_funnel_and_the_reference_first():
    summary = headline(STAGE_METRICS)
    funnel = "\n".join(funnel_lines(summary))
    assert "generated 120 + retrieved 80 = 200 candidates" in funnel and "-> 100 curated (34% real)" in funnel
    assert "left out by dedup.balance" not in funnel           # metrics without survivors: no balance line


def test_the_funnel_says_what_balancing_left_out():
    summary = headline({**STAGE_METRICS, "dedup": {**STAGE_METRICS["dedup"], "survivors": 130}})
    assert summary["balanced_out"] == 30                          # 130 survivors, 100 curated
    assert "-> 30 left out by dedup.balance" in "\n".join(funnel_lines(summary))
    lines = metric_lines(summary)
    assert lines[1].split()[:3] == ["pas", "70.0", "50.0"] and lines[2].split()[0] == "imagenet"
    assert "imagenet +15.0" in lines[3] and any("ORACLE CONCEPTS" in line for line in lines)


def test_oracle_exemplars_reach_the_summary_and_show_only_when_the_exemplar_rule_ran():
    assert "oracle_exemplars" not in headline(STAGE_METRICS)        # the default summary keeps its keys
    ran = {**STAGE_METRICS, "filter": {**STAGE_METRICS["filter"], "oracle_exemplars": True}}
    summary = headline(ran)
    assert summary["oracle_exemplars"] == 1 and any("ORACLE EXEMPLARS" in line for line in metric_lines(summary))
    clean = headline({**STAGE_METRICS, "filter": {**STAGE_METRICS["filter"], "oracle_exemplars": False}})
    assert clean["oracle_exemplars"] == 0 and not any("ORACLE EXEMPLARS" in line for line in metric_lines(clean))


def test_a_missing_stage_metrics_file_is_named(tmp_path):
    for stage in STAGES[:-1]:
        (tmp_path / f"{stage}.json").write_text(json.dumps(STAGE_METRICS[stage]))
    with pytest.raises(FileNotFoundError, match=r"eval.json not found; run the pipeline first"):
        read_stage_metrics([tmp_path / f"{s}.json" for s in STAGES])
    with pytest.raises(FileNotFoundError, match=r"no metrics of eval given"):
        read_stage_metrics([tmp_path / f"{s}.json" for s in STAGES[:-1]])


def test_show_names_the_finished_pipeline_run_of_the_workspace_params(tmp_path, monkeypatch):
    """Not the newest run of any status: a failed bad-input run and another experiment's run come later."""
    import yaml
    from mlflow.tracking import MlflowClient

    from pas.core.config import load_params
    from pas.core.provenance import params_digest
    from pas.core.tracking import PARAMS_DIGEST_TAG
    from pas.evaluate.show import pipeline_run, where_lines

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"size": 300, "domain": "birds"}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("pas-birds")
    mine = params_digest(load_params("params.yaml"))
    for name, digest, status in (("pique-tang", mine, "FINISHED"), ("mucky-jags", mine, "FAILED"),
                                 ("lunar-juts", "0123456789ab", "FINISHED")):     # oldest first
        run = client.create_run(exp, run_name=name, tags={"pas.kind": "pipeline", PARAMS_DIGEST_TAG: digest,
                                                          "dvc.exp_name": name})
        client.set_terminated(run.info.run_id, status)
    assert "(pique-tang) in " in pipeline_run(None) and "may be another's" not in pipeline_run(None)
    assert "(lunar-juts) in " in pipeline_run("lunar-juts")
    assert "no finished pipeline run of mucky-jags" in pipeline_run("mucky-jags")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"size": 400, "domain": "birds"}))   # no run of these
    assert "(lunar-juts) (the newest finished one: no run recorded these params' digest" in pipeline_run(None)
    assert where_lines("lunar-juts") == ["  dataset report, evaluation, plots: the workspace's files are not "
                                         "lunar-juts's; `dvc exp apply lunar-juts` puts them there"]
