"""Headline numbers of a run (metrics/summary.json, the one DVC metric): the dataset funnel, pretraining compute,
top-1 of each init and the reference's gains, at most about 20 numbers so `dvc exp show` stays readable.

    summary = headline(read_stage_metrics([Path("metrics") / f"{s}.json" for s in STAGES]))
    summary["top1.pas.linear"], summary["gain.imagenet.linear"], summary["curated"]
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STAGES = ("generate", "retrieve", "filter", "dedup", "pretrain", "eval")
PROTOCOLS = ("linear", "knn", "full")       # top-1 per init: the mean over the downstream datasets
GAINS = ("linear",)                          # the reference's gain over each baseline
FUNNEL = (("generated", "generate", "images"), ("retrieved", "retrieve", "images"),
          ("candidates", "filter", "candidates"), ("kept_by_filter", "filter", "kept"),
          ("duplicates_removed", "dedup", "duplicates_removed"),
          ("contaminated_removed", "dedup", "contaminated_removed"), ("curated", "dedup", "curated"),
          ("real_share", "dedup", "real_share"))


def read_stage_metrics(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """{stage: metrics} of the metrics/<stage>.json files given, which must cover STAGES; a missing one is named."""
    out = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; run the pipeline first (dvc repro)")
        out[path.stem] = json.loads(path.read_text())
    if missing := [stage for stage in STAGES if stage not in out]:
        raise FileNotFoundError(f"no metrics of {', '.join(missing)} given (metrics/<stage>.json)")
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _four_places(value: Any) -> Any:
    """A share as dvc exp show can print it beside the other columns (0.3433, not 0.3433333333333333)."""
    return round(value, 4) if isinstance(value, float) else value


def headline(stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The flat summary: funnel counts, images seen, mean top-1 per (init, protocol), gains, oracle / mixed flags."""
    out: dict[str, Any] = {name: _four_places(stages[stage].get(key)) for name, stage, key in FUNNEL}
    dedup = stages["dedup"]
    if "survivors" in dedup:   # survivors past dedup and decontamination that balancing left out to reach size
        out["balanced_out"] = dedup["survivors"] - dedup.get("curated", 0)
    out["pretrain_images_seen"] = stages["pretrain"].get("images_seen")
    evaluation = stages["eval"]
    summary = evaluation.get("summary", {})
    reference = summary.get("reference", "pas")
    datasets = {name: value for name, value in evaluation.items() if name != "summary"}
    inits = sorted({init for results in datasets.values() for init in results if init not in ("gain", "elfis_gain")},
                   key=lambda i: (i != reference, i))
    for init in inits:
        for protocol in PROTOCOLS:
            found = [results[init][protocol]["top1"] for results in datasets.values()
                     if protocol in results.get(init, {})]
            if found:
                out[f"top1.{init}.{protocol}"] = round(_mean(found), 4)
    for baseline, by_result in summary.get("gain", {}).items():
        for protocol in GAINS:
            if protocol in by_result:
                out[f"gain.{baseline}.{protocol}"] = round(by_result[protocol], 4)
    out["oracle_concepts"] = int(bool(summary.get("oracle_concepts")))
    out["mixed_architecture"] = int(bool(summary.get("mixed_architecture")))
    if "oracle_exemplars" in stages["filter"]:   # only when filter.exemplars ran: the default summary is unchanged
        out["oracle_exemplars"] = int(bool(stages["filter"]["oracle_exemplars"]))
    return out
