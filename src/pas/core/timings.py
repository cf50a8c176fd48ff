"""Timings apart from results: wall-clock figures go to MLflow, never into a file DVC tracks.

A metric is a timing when its key is `seconds`, ends in `_seconds` or holds `per_second` (at any depth). A stage's
metrics/<stage>.json (and any record a stage writes for DVC) keeps the rest, so a fresh clone's `dvc repro`
reproduces the committed dvc.lock byte for byte; the stage's MLflow run gets both.
"""
from __future__ import annotations

from typing import Any


def is_timing(key: str) -> bool:
    """Whether a metric key names a wall-clock figure (seconds, x_seconds, images_per_second)."""
    return key == "seconds" or key.endswith("_seconds") or "per_second" in key


def split_timings(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results, timings): the same nesting, each key in exactly one of them; empty sections are dropped."""
    results: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            kept, timed = split_timings(value)
            if kept or not timed:
                results[key] = kept
            if timed:
                timings[key] = timed
        elif is_timing(key):
            timings[key] = value
        else:
            results[key] = value
    return results, timings
