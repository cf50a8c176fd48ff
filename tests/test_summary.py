"""metrics/summary.json: the headline numbers a team compares experiments by, and `pas show`'s page of them."""
from __future__ import annotations

import json

import pytest

from pas.evaluate.show import funnel_lines, metric_lines
from pas.evaluate.summary import STAGES, headline, read_stage_metrics

STAGE_METRICS = {
    "generate": {"images": 120, "shards": 1}, "retrieve": {"images": 80, "requested": 80},
    "filter": {"candidates": 200, "kept": 150}, "pretrain": {"images_seen": 4096, "steps": 64},
    "dedup": {"duplicates_removed": 20, "contaminated_removed": 5, "curated": 100, "real_share": 0.4},
    "eval": {"birds": {"pas": {"linear": {"top1": 0.6}, "knn": {"top1": 0.5}},
                       "imagenet": {"linear": {"top1": 0.4}, "knn": {"top1": 0.3}}, "gain": {}},
             "food": {"pas": {"linear": {"top1": 0.8}}, "imagenet": {"linear": {"top1": 0.7}}, "gain": {}},
             "summary": {"reference": "pas", "gain": {"imagenet": {"linear": 0.15, "knn": 0.2}},
                         "oracle_concepts": True}},
}


def test_headline_is_the_funnel_compute_mean_top1_and_gains():
    summary = headline(STAGE_METRICS)
    assert (summary["generated"], summary["retrieved"], summary["candidates"], summary["kept_by_filter"],
            summary["curated"], summary["real_share"]) == (120, 80, 200, 150, 100, 0.4)
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
    assert "generated 120 + retrieved 80 = 200 candidates" in funnel and "-> 100 curated (40% real)" in funnel
    lines = metric_lines(summary)
    assert lines[1].split()[:3] == ["pas", "70.0", "50.0"] and lines[2].split()[0] == "imagenet"
    assert "imagenet +15.0" in lines[3] and any("ORACLE CONCEPTS" in line for line in lines)


def test_a_missing_stage_metrics_file_is_named(tmp_path):
    for stage in STAGES[:-1]:
        (tmp_path / f"{stage}.json").write_text(json.dumps(STAGE_METRICS[stage]))
    with pytest.raises(FileNotFoundError, match=r"eval.json not found; run the pipeline first"):
        read_stage_metrics([tmp_path / f"{s}.json" for s in STAGES])
    with pytest.raises(FileNotFoundError, match=r"no metrics of eval given"):
        read_stage_metrics([tmp_path / f"{s}.json" for s in STAGES[:-1]])
