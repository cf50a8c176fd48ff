"""Run facts apart from results: how one execution went goes to MLflow and the log, never into a file DVC tracks.

A run fact is a wall-clock figure (key `seconds`, `*_seconds` or holding `per_second`) or a count of the work this
execution did rather than what it produced (images rendered vs restored from the team's work store vs kept from an
earlier run, pool chunks embedded vs restored, URLs downloaded vs restored, the step a training resumed at, the
engine). The same outputs can come from different amounts of work: a colleague who restores Alice's images must end
with Alice's dvc.lock, and a fresh clone must reproduce the committed one byte for byte. metrics/<stage>.json (and
any record a stage writes for DVC) keeps the results; the stage's MLflow run gets both.
"""
from __future__ import annotations

from typing import Any

WORK_COUNTS = frozenset({
    "images_rendered", "images_restored", "shards_kept", "shards_updated", "shards_rendered",   # generate
    "chunks_embedded", "chunks_restored",                                                       # pool_index
    "urls_downloaded", "urls_restored",                                                         # retrieve's downloads
    "resumed_at_step", "engine",                                                                # pretrain, generate
})


def is_run_fact(key: str) -> bool:
    """Whether a metric key is a run fact (a timing or a count of work done) rather than a result."""
    return key == "seconds" or key.endswith("_seconds") or "per_second" in key or key in WORK_COUNTS


def split_run_facts(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results, run facts): the same nesting, each key in exactly one of them; sections left empty are dropped."""
    results: dict[str, Any] = {}
    facts: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            kept, moved = split_run_facts(value)
            if kept or not moved:
                results[key] = kept
            if moved:
                facts[key] = moved
        elif is_run_fact(key):
            facts[key] = value
        else:
            results[key] = value
    return results, facts
