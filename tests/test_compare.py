"""pas.evaluate.compare: evaluate runs of two sizes in a real (SQLite) MLflow store -> table rows, CSV and plot."""
from __future__ import annotations

import csv

import pytest
from PIL import Image

from pas.core.config import parse_size
from pas.core.tracking import stage_run
from pas.evaluate.compare import collect, main


def _evaluate_run(size, linear: dict[str, float], method="simclr", label_free: float | None = None,
                  budget="epochs", images_seen=None):
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
    with stage_run("evaluate", params, "pas-test") as run:
        run.log_metrics(metrics)


@pytest.fixture
def tracking_db(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


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

    assert main(["--out", str(tmp_path / "cmp")]) == 0
    assert "2 experiment point(s)" in capsys.readouterr().out
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "## animals: linear" in table
    assert "| size | method | backbone | mix | exp | budget | images seen | pas | imagenet | random |" in table
    assert ("| 300 | simclr | resnet18 | generated=0.5 retrieved=0.5 | - | epochs | 600 | 45.0 | 90.0 | 30.0 | -45.0 "
            "| +15.0 |") in table
    assert "| 2000 | simclr | resnet18 | generated=0.5 retrieved=0.5 | - | epochs | 4000 |" in table
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
    assert "| 300 | simclr | resnet18 | generated=0.5 retrieved=0.5 | - | 1024 | 1024 |" in table
    assert "| 2000 | simclr | resnet18 | generated=0.5 retrieved=0.5 | - | 1024 | 1024 |" in table
    assert "Unequal compute" not in table
    rows = list(csv.DictReader(open(tmp_path / "cmp" / "compare.csv")))
    assert {(r["size"], r["budget"], r["images_seen"]) for r in rows} == {("300", "1024", "1024"),
                                                                          ("2000", "1024", "1024")}
