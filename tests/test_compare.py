"""pas.evaluate.compare: evaluate runs in a real (SQLite) MLflow store -> table rows, CSV and plot; a point per
pipeline execution, and gains across architectures marked CONFOUNDED."""
from __future__ import annotations

import csv
import importlib.util

import pytest
import yaml
from conftest import REPO
from mlflow.tracking import MlflowClient
from PIL import Image

from pas.core import tracking
from pas.core.config import parse_size
from pas.core.tracking import stage_run
from pas.evaluate.compare import collect, compare, main
from pas.evaluate.honesty import check_architectures

PIPELINE = {"size": "300", "seed": 0, "domain": "animals", "mix": {"generated": 0.5, "retrieved": 0.5},
            "pretrain": {"method": "simclr", "backbone": "resnet18", "budget": 0}}


def _honesty_tags(arches: dict[str, str]) -> dict[str, str]:
    """The MLflow tags the evaluate stage sets for these init architectures (allow_mixed_arch: true)."""
    spec = importlib.util.spec_from_file_location("stage_evaluate", REPO / "stages" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mixed = check_architectures(arches, "pas", allow_mixed=True)
    return module.honesty_tags({"mixed_architecture": mixed} if mixed else {})


SAME = {"pas": "resnet18", "random": "resnet18", "imagenet": "resnet18"}


def _evaluate_run(size, linear: dict[str, float], method="simclr", label_free: float | None = None,
                  budget="epochs", images_seen=None, arches: dict[str, str] | None = SAME,
                  pipeline: dict | None = None, experiment: str = "pas-test"):
    """One evaluate run (in the current execution); arches=None: logged before evaluate tagged pas.comparison."""
    seen = images_seen if images_seen is not None else 2 * parse_size(size)   # 2 epochs unless a budget is set
    params = {"size": size, "mix": {"generated": 0.5, "retrieved": 0.5},
              "pretrain": {"method": method, "backbone": "resnet18", "budget": budget, "images_seen": seen},
              "evaluate": {"reference": "pas"}}
    metrics = {"animals": {init: {"linear": {"top1": v, "top5": 1.0},
                                  "fewshot_5": {"top1": v / 2, "top1_std": 0.01, "top5": 0.9}}
                           for init, v in linear.items()},
               "summary": {"gain": {"random": {"linear": 0.1}},
                           **({"label_free_score": label_free} if label_free is not None else {})}}
    metrics["animals"]["gain"] = {"random": {"linear": linear["pas"] - linear["random"]}}
    with stage_run("evaluate", params, experiment, pipeline) as run:
        run.log_metrics(metrics)
        if arches is not None:
            run.set_tags(_honesty_tags(arches))


@pytest.fixture
def tracking_db(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def execution(monkeypatch):
    """Start a new pipeline execution (a new parent run), as a fresh `dvc exp run` (name) or `dvc repro` would."""
    count = iter(range(1, 100))

    def start(name: str | None = None) -> None:
        invocation = f"dvc-{next(count)}-0"
        monkeypatch.setattr(tracking, "invocation_id", lambda: invocation)
        if name:
            monkeypatch.setenv("DVC_EXP_NAME", name)
        else:
            monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return start


def _pipeline_execution(execution, name, threshold, top1, budget=0, filter_ran=True):
    """A pipeline execution: the filter stage (filter.threshold) then evaluate, under one parent run."""
    execution(name)
    pipeline = {**PIPELINE, "pretrain": {**PIPELINE["pretrain"], "budget": budget}}
    if filter_ran:
        with stage_run("filter", {"filter": {"threshold": threshold, "batch_size": 64}}, "pas-test", pipeline):
            pass
    _evaluate_run("300", {"pas": top1, "random": 0.30, "imagenet": 0.90}, budget=budget or "epochs",
                  images_seen=budget or 600, pipeline=pipeline)


def _csv(path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_two_sizes_give_two_rows_a_csv_and_a_plot(tracking_db, tmp_path, capsys):
    _evaluate_run("300", {"pas": 0.40, "random": 0.30, "imagenet": 0.90})  # superseded by the rerun below
    _evaluate_run("300", {"pas": 0.45, "random": 0.30, "imagenet": 0.90})
    _evaluate_run("2k", {"pas": 0.60, "random": 0.30, "imagenet": 0.90})
    with stage_run("finetune", {"seed": 0}, "pas-test") as run:  # other stages are ignored
        run.log_metrics({"animals": {"pas": {"linear": {"top1": 0.1}}}})

    rows = collect(tracking_db)
    linear = sorted((r.size, r.init, r.top1) for r in rows if r.result == "linear")
    assert linear == [(300, "imagenet", 0.9), (300, "pas", 0.45), (300, "random", 0.3),
                      (2000, "imagenet", 0.9), (2000, "pas", 0.6), (2000, "random", 0.3)]
    assert {r.result for r in rows} == {"linear", "fewshot_5"}  # gains and the summary are not results
    assert all(r.mix == "generated=0.5 retrieved=0.5" and r.method == "simclr" for r in rows)

    exp = rows[0].execution       # one process, one execution: its pipeline run is named repro-<time>
    assert exp.startswith("repro-") and {r.execution for r in rows} == {exp}
    assert main(["--out", str(tmp_path / "cmp")]) == 0
    assert "2 experiment point(s)" in capsys.readouterr().out
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "## animals: linear" in table
    assert "| size | method | backbone | mix | exp | budget | images seen | pas | imagenet | random |" in table
    assert (f"| 300 | simclr | resnet18 | generated=0.5 retrieved=0.5 | {exp} | epochs | 600 | 45.0 | 90.0 | 30.0 "
            "| -45.0 | +15.0 |") in table
    assert f"| 2000 | simclr | resnet18 | generated=0.5 retrieved=0.5 | {exp} | epochs | 4000 |" in table
    assert "CONFOUNDED" not in table and "architecture not recorded" not in table
    assert "Unequal compute" in table   # 2 epochs of 300 vs 2 epochs of 2000 images
    with open(tmp_path / "cmp" / "compare.csv") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert len(csv_rows) == len(rows) == 12
    with Image.open(tmp_path / "cmp" / "compare.png") as image:
        assert image.format == "PNG" and image.size[0] >= 500


def test_no_runs_is_a_clear_error(tracking_db, tmp_path, capsys):
    assert main(["--out", str(tmp_path / "cmp")]) == 2                      # no store at all: named, none created
    assert "pas compare: error: no MLflow store" in capsys.readouterr().err and not (tmp_path / "mlflow.db").exists()
    with stage_run("finetune", {"seed": 0}, "other-experiment"):            # a store without pas-* experiments
        pass
    assert main(["--out", str(tmp_path / "cmp")]) == 2
    assert "no MLflow experiment named pas-*" in capsys.readouterr().err


def test_experiments_are_ranked_by_the_label_free_score_with_its_rank_correlation(tracking_db, tmp_path):
    for size, top1, loss in (("300", 0.40, 0.9), ("1k", 0.50, 0.7), ("2k", 0.45, 0.8), ("4k", 0.60, 0.5)):
        _evaluate_run(size, {"pas": top1, "random": 0.30}, method="lejepa", label_free=loss)
    assert main(["--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    ranking = table[table.index("## Label-free ranking"):]
    order = [line.split(" | ")[1] for line in ranking.splitlines() if line.startswith("| ") and "rank" not in line]
    assert order == ["4000", "1000", "2000", "300"]                    # lowest held-out loss first
    assert "Spearman rank correlation of (− loss) with top-1: **+1.00** over 4 experiments" in ranking
    with open(tmp_path / "cmp" / "compare.csv") as handle:
        scores = {(row["size"], row["init"]): row["label_free_score"] for row in csv.DictReader(handle)
                  if row["result"] == "linear"}
    assert scores[("300", "pas")] == "0.9"


def test_the_rank_correlation_says_when_the_score_disagrees_with_the_labels(tracking_db, tmp_path):
    for size, top1, loss in (("300", 0.60, 0.9), ("1k", 0.50, 0.7), ("2k", 0.40, 0.5)):
        _evaluate_run(size, {"pas": top1, "random": 0.30}, method="lejepa", label_free=loss)
    main(["--out", str(tmp_path / "cmp")])
    assert "**-1.00** over 3 experiments" in (tmp_path / "cmp" / "compare.md").read_text()


def test_a_budget_sweep_shows_equal_images_seen_and_no_compute_warning(tracking_db, tmp_path):
    _evaluate_run("300", {"pas": 0.45, "random": 0.30, "imagenet": 0.90}, budget=1024, images_seen=1024)
    _evaluate_run("2k", {"pas": 0.60, "random": 0.30, "imagenet": 0.90}, budget=1024, images_seen=1024)
    assert main(["--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    exp = collect(tracking_db)[0].execution
    assert f"| 300 | simclr | resnet18 | generated=0.5 retrieved=0.5 | {exp} | 1024 | 1024 |" in table
    assert f"| 2000 | simclr | resnet18 | generated=0.5 retrieved=0.5 | {exp} | 1024 | 1024 |" in table
    assert "Unequal compute" not in table
    rows = _csv(tmp_path / "cmp" / "compare.csv")
    assert {(r["size"], r["budget"], r["images_seen"]) for r in rows} == {("300", "1024", "1024"),
                                                                          ("2000", "1024", "1024")}


@pytest.mark.parametrize("second", [{"threshold": -0.5}, {"threshold": -0.5, "budget": 1024}],
                         ids=["threshold", "threshold-and-budget"])
def test_executions_differing_only_in_filter_params_are_two_rows_told_apart(tracking_db, execution, tmp_path,
                                                                              capsys, second):
    _pipeline_execution(execution, "exp-base", threshold=0.0, top1=0.45)
    _pipeline_execution(execution, "exp-strict", top1=0.50, **{"threshold": 0.0, **second})

    rows = [r for r in collect(tracking_db) if r.result == "linear" and r.init == "pas"]
    assert sorted((r.exp_name, r.top1) for r in rows) == [("exp-base", 0.45), ("exp-strict", 0.50)]
    assert len({r.parent_run_id for r in rows}) == 2
    assert {r.exp_name: r.params for r in rows}["exp-strict"] == "filter.threshold=-0.5"   # budget has its column
    assert main(["--out", str(tmp_path / "cmp")]) == 0
    assert "2 experiment point(s)" in capsys.readouterr().out
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| exp | budget | images seen | params | pas |" in table
    assert "| exp-base | epochs | 600 | filter.threshold=0.0 | 45.0 |" in table
    budget = "1024 | 1024" if "budget" in second else "epochs | 600"
    assert f"| exp-strict | {budget} | filter.threshold=-0.5 | 50.0 |" in table
    linear = {(r["exp_name"], r["params"]) for r in _csv(tmp_path / "cmp" / "compare.csv") if r["result"] == "linear"}
    assert linear == {("exp-base", "filter.threshold=0.0"), ("exp-strict", "filter.threshold=-0.5")}


def test_reruns_of_identical_params_collapse_into_the_newest(tracking_db, execution, tmp_path, capsys):
    _pipeline_execution(execution, None, threshold=-0.5, top1=0.40)       # dvc repro ...
    _pipeline_execution(execution, None, threshold=-0.5, top1=0.45)       # ... again after a code change
    _pipeline_execution(execution, None, threshold=-0.5, top1=0.47, filter_ran=False)   # only evaluate re-ran

    rows = collect(tracking_db)
    full = [r for r in rows if r.result == "linear" and r.init == "pas"]
    assert len(full) == 2 and len({r.parent_run_id for r in rows}) == 2 # the partial one: its own (unmerged) point
    assert sorted(r.top1 for r in full) == [0.45, 0.47]                   # the older identical re-run is gone
    assert {r.top1: r.params for r in full} == {0.45: "", 0.47: ""}       # nothing recorded differs
    assert main(["--out", str(tmp_path / "cmp")]) == 0
    assert "2 experiment point(s)" in capsys.readouterr().out


def test_one_params_file_is_one_point_whatever_stages_reran(tracking_db, execution, tmp_path, monkeypatch):
    """Stages run through run_stage tag the whole params file's digest: a partial re-run (only evaluate, after a code
    change) with the same params.yaml replaces the full run's point; a changed params.yaml is a new point."""
    from pas.core.stage import run_stage, stage_parser
    from pas.core.tracking import PARAMS_DIGEST_TAG

    monkeypatch.chdir(tmp_path)

    def stage(name, params_file, top1=None):
        def body(args, params, run):
            if top1 is not None:
                run.log_metrics({"animals": {"pas": {"linear": {"top1": top1}}, "random": {"linear": {"top1": 0.3}}}})
            return {}
        run_stage(name, ("size", "mix", "pretrain"), stage_parser(name, name), body,
                  ["--params", str(params_file), "--metrics-dir", str(tmp_path / "metrics")])

    base = {"size": 300, "mix": {"generated": 0.5, "retrieved": 0.5}, "pretrain": {"method": "simclr"},
            "filter": {"threshold": -0.5}}
    same, changed = tmp_path / "a.yaml", tmp_path / "b.yaml"
    same.write_text(yaml.safe_dump(base))
    changed.write_text(yaml.safe_dump({**base, "filter": {"threshold": 0.0}}))
    execution(None)
    stage("filter", same)
    stage("evaluate", same, top1=0.40)
    execution(None)
    stage("evaluate", same, top1=0.47)                 # only evaluate re-ran: same params file
    execution(None)
    stage("evaluate", changed, top1=0.42)              # filter.threshold changed (its stage ran elsewhere)

    rows = [r for r in collect(tracking_db) if r.init == "pas"]
    assert sorted(r.top1 for r in rows) == [0.42, 0.47]
    runs = MlflowClient(tracking_uri=tracking_db).search_runs(
        [MlflowClient(tracking_uri=tracking_db).get_experiment_by_name("pas-default").experiment_id])
    digests = {r.data.tags.get(PARAMS_DIGEST_TAG) for r in runs}
    assert len(digests) == 2 and None not in digests   # every run, parents included, names its params file


def test_a_gain_across_architectures_is_marked_confounded_in_the_table_and_the_csv(tracking_db, execution, tmp_path,
                                                                                     capsys):
    execution("mixed")
    _evaluate_run("300", {"pas": 0.45, "random": 0.30, "imagenet": 0.90},
                  arches={"pas": "resnet18", "random": "resnet18", "imagenet": "tf_efficientnet_lite0"})
    execution("same")
    _evaluate_run("2k", {"pas": 0.60, "random": 0.30, "imagenet": 0.90})

    assert main(["--out", str(tmp_path / "cmp")]) == 0
    assert "CONFOUNDED: 1 point(s) compare different architectures" in capsys.readouterr().out
    table = (tmp_path / "cmp" / "compare.md").read_text()
    linear = table[table.index("## animals: linear"):table.index("## animals: fewshot_5")]
    banner = next(line for line in linear.splitlines() if line.startswith("**CONFOUNDED"))
    assert banner.endswith("**") and "2000" not in banner and "pas − random" not in banner
    assert "300 · simclr · resnet18 · generated=0.5 retrieved=0.5 · mixed (pas − imagenet)" in banner
    assert "| mixed | epochs | 600 | 45.0 | 90.0 | 30.0 | -45.0 (CONFOUNDED: different architecture) | +15.0 |" \
        in linear
    assert "| same | epochs | 4000 | 60.0 | 90.0 | 30.0 | -30.0 | +30.0 |" in linear
    gains = {(r["exp_name"], r["init"]): (r["gain"], r["gain_comparison"], r["comparison"])
             for r in _csv(tmp_path / "cmp" / "compare.csv") if r["result"] == "linear"}
    assert gains[("mixed", "imagenet")][1:] == ("CONFOUNDED: different architecture",
                                                "CONFOUNDED: different architectures (imagenet)")
    assert float(gains[("mixed", "imagenet")][0]) == pytest.approx(-0.45)
    assert gains[("mixed", "random")][1] == gains[("same", "imagenet")][1] == "same architecture"
    assert gains[("mixed", "pas")][:2] == ("", "")                  # the reference has no gain over itself


def test_a_run_without_the_architecture_tag_says_architecture_not_recorded(tracking_db, tmp_path):
    _evaluate_run("300", {"pas": 0.45, "random": 0.30}, arches=None)   # logged before evaluate tagged it
    assert main(["--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| +15.0 (architecture not recorded) |" in table and "**CONFOUNDED" not in table
    rows = [r for r in _csv(tmp_path / "cmp" / "compare.csv") if r["init"] == "random"]
    assert {(r["gain_comparison"], r["comparison"]) for r in rows} == {("architecture not recorded",) * 2}


def test_two_domains_never_share_a_table_or_a_plot_line(tracking_db, execution, tmp_path):
    execution("lunar-juts")
    _evaluate_run("300", {"pas": 0.31, "random": 0.30, "imagenet": 0.90}, experiment="pas-food")
    execution("pique-tang")
    _evaluate_run("300", {"pas": 0.396, "random": 0.30, "imagenet": 0.90}, experiment="pas-birds")
    summary = compare(tracking_db, tmp_path / "cmp")
    assert summary["points"] == 2
    table = (tmp_path / "cmp" / "compare.md").read_text()
    food = table[table.index("## pas-food · animals: linear"):]
    birds = table[table.index("## pas-birds · animals: linear"):table.index("## pas-food · animals: linear")]
    assert "| lunar-juts |" not in birds and "| pique-tang |" in birds
    assert "| lunar-juts |" in food.split("## pas-food · animals: fewshot_5")[0]


def test_an_evaluate_run_whose_pipeline_run_was_deleted_is_still_a_row(tracking_db, execution):
    execution("gone")
    _evaluate_run("300", {"pas": 0.45, "random": 0.30, "imagenet": 0.90})
    client = MlflowClient(tracking_uri=tracking_db)
    (evaluate,) = client.search_runs([client.get_experiment_by_name("pas-test").experiment_id],
                                     "tags.`pas.stage` = 'evaluate'")
    client.delete_run(evaluate.data.tags["mlflow.parentRunId"])          # deleted in the MLflow UI
    rows = [r for r in collect(tracking_db) if r.init == "pas" and r.result == "linear"]
    assert [(r.top1, r.exp_name, r.execution) for r in rows] == [(0.45, "", "")]
