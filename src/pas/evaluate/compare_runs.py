"""`pas compare`'s rows: every finished evaluate run in MLflow, one point per pipeline execution (re-runs of one params
file collapse into the newest), with what tells the points apart and whether each gain compares one architecture."""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

from pas.core.config import PasError, parse_size
from pas.core.tracking import PARAMS_DIGEST_TAG

log = logging.getLogger(__name__)

_SKIP = {"gain", "elfis_gain", "summary"}
_COLUMNS = {"size", "pretrain.method", "pretrain.backbone", "pretrain.budget", "pretrain.images_seen"}  # own columns
SAME, CONFOUNDED, UNRECORDED = "same architecture", "CONFOUNDED: different architecture", "architecture not recorded"


@dataclasses.dataclass(frozen=True)
class Row:
    """One result of one experiment: coordinates, dataset, init, result name and accuracies."""

    experiment: str
    run_id: str
    exp_name: str
    size: int
    method: str
    backbone: str
    mix: str
    dataset: str
    init: str
    result: str
    top1: float
    top1_std: float | None
    top5: float | None
    label_free_score: float | None = None  # LeJEPA's held-out loss of the pretrained backbone (lower: better)
    budget: str = "-"        # pretrain.budget in images, or "epochs" (fixed passes: compute grows with size)
    images_seen: str = "-"   # images the pretraining actually trained on (steps x global batch)
    execution: str = ""      # the pipeline run's name: the DVC experiment's, else repro-<time>
    parent_run_id: str = ""  # the pipeline run (one `dvc repro` / `dvc exp run`) the evaluate run belongs to
    params: str = ""         # params beyond the columns whose values differ between points: "filter.threshold=-0.5"
    comparison: str = ""     # the evaluate run's pas.comparison tag ("": logged before evaluate recorded it)


def _mixed(comparison: str) -> frozenset[str] | None:
    """Inits whose architecture differs from evaluate's reference, read from a pas.comparison tag; None: unknown."""
    if comparison == SAME:
        return frozenset()
    found = re.fullmatch(r"CONFOUNDED\b.*\((.*)\)", comparison)
    return frozenset(found.group(1).split(", ")) if found else None


def arch_check(comparison: str, reference: str, baseline: str) -> str:
    """Whether `reference` − `baseline` compares one architecture (SAME), two (CONFOUNDED) or unknown (UNRECORDED)."""
    mixed = _mixed(comparison)
    if mixed is None or {reference, baseline} <= mixed:   # both differ from evaluate's reference: maybe not each other
        return UNRECORDED
    return CONFOUNDED if (reference in mixed) != (baseline in mixed) else SAME


def _mix(params: dict[str, str]) -> str:
    parts = sorted((k.split(".", 1)[1], v) for k, v in params.items() if k.startswith("mix."))
    return " ".join(f"{name}={value}" for name, value in parts) or "-"


def _rows_of_run(run: Any, experiment: str, parent: Any | None) -> list[Row]:
    params, metrics = run.data.params, run.data.metrics
    if "size" not in params:
        log.warning("evaluate run %s has no size param; skipped (logged before pas.evaluate.compare existed?)",
                    run.info.run_id)
        return []
    coords = dict(experiment=experiment, run_id=run.info.run_id, exp_name="", size=parse_size(params["size"]),
                  method=params.get("pretrain.method", "-"), backbone=params.get("pretrain.backbone", "-"),
                  mix=_mix(params), budget=params.get("pretrain.budget", "-"),
                  images_seen=params.get("pretrain.images_seen", "-"),
                  comparison=run.data.tags.get("pas.comparison", ""))
    if parent is not None:
        coords.update(exp_name=parent.data.tags.get("dvc.exp_name", ""), execution=parent.info.run_name or "",
                      parent_run_id=parent.info.run_id)
    rows = []
    for key, value in metrics.items():
        parts = key.rsplit(".", 3)
        if len(parts) != 4 or parts[3] != "top1" or parts[1] in _SKIP or parts[0] in _SKIP:
            continue
        dataset, init, result, _ = parts
        prefix = f"{dataset}.{init}.{result}"
        rows.append(Row(**coords, dataset=dataset, init=init, result=result, top1=value,
                        top1_std=metrics.get(f"{prefix}.top1_std"), top5=metrics.get(f"{prefix}.top5"),
                        label_free_score=metrics.get("summary.label_free_score")))
    return rows


def execution_params(run: Any, parent: Any | None, siblings: Sequence[Any]) -> dict[str, str]:
    """The chosen params of an evaluate run's execution: its pipeline run's, its finished stage runs' (the newest of
    each stage, derived.* left out), then its own (evaluate's pretrain.budget comes from the model card)."""
    newest: dict[str, Any] = {}
    for sibling in siblings:   # newest first
        stage = sibling.data.tags.get("pas.stage")
        if stage not in (None, "evaluate") and sibling.info.status == "FINISHED":
            newest.setdefault(stage, sibling)
    merged = dict(parent.data.params) if parent else {}
    for stage in sorted(newest):
        merged.update(newest[stage].data.params)
    merged.update(run.data.params)
    return {key: value for key, value in merged.items() if not key.startswith("derived.")}


def differing(points: dict[str, dict[str, str]]) -> dict[str, str]:
    """Per point, "key=value ..." of the params beyond the table's columns that take different values across points
    (`key=?`: the stage reading it did not run in that execution, so it is not recorded)."""
    values: dict[str, set[str]] = {}
    for params in points.values():
        for key, value in params.items():
            values.setdefault(key, set()).add(value)
    keys = sorted(k for k, v in values.items() if len(v) > 1 and k not in _COLUMNS and not k.startswith("mix."))
    return {point: " ".join(f"{k}={params.get(k, '?')}" for k in keys) for point, params in points.items()}


def _all_runs(client: Any, experiment_ids: list[str]) -> list[Any]:
    """Every active run of the experiments, newest first (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, order_by=["attributes.start_time DESC"], page_token=token)
        runs += page
        if not (token := page.token):
            return runs


def collect(tracking_uri: str, experiments: Sequence[str] = ()) -> list[Row]:
    """Rows of every finished evaluate run in the named or all pas-* experiments: a point per pipeline execution,
    re-runs of identical params collapsed into the newest."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = [e for e in client.search_experiments() if (e.name in experiments if experiments else
                                                        e.name.startswith("pas-"))]
    if not found:
        raise PasError(f"no MLflow experiment {' or '.join(experiments) or 'named pas-*'} at {tracking_uri}; "
                       "run the pipeline (dvc repro / dvc exp run) first")
    return points_of(_all_runs(client, [e.experiment_id for e in found]), {e.experiment_id: e.name for e in found})


def points_of(runs: Sequence[Any], names: dict[str, str]) -> list[Row]:
    """Rows of the finished evaluate runs among `runs` (newest first), the newest of each set of execution params."""
    by_id = {run.info.run_id: run for run in runs}
    children: dict[str, list[Any]] = {}
    for run in runs:
        children.setdefault(run.data.tags.get("mlflow.parentRunId", ""), []).append(run)
    seen: set[tuple] = set()
    points: dict[str, tuple[list[Row], dict[str, str]]] = {}
    for run in runs:  # newest first: the first run of each set of params wins
        if run.data.tags.get("pas.stage") != "evaluate" or run.info.status != "FINISHED":
            continue
        parent_id = run.data.tags.get("mlflow.parentRunId", "")
        parent = by_id.get(parent_id)
        params = execution_params(run, parent, children.get(parent_id, []) if parent_id else [])
        # one params file, one point: the whole-params digest where recorded, else the params the runs logged
        key = (run.info.experiment_id, run.data.tags.get(PARAMS_DIGEST_TAG) or frozenset(params.items()))
        run_rows = _rows_of_run(run, names[run.info.experiment_id], parent)
        if run_rows and key not in seen:
            seen.add(key)
            points[run.info.run_id] = (run_rows, params)
    shown = differing({point: params for point, (_, params) in points.items()})
    rows = [dataclasses.replace(row, params=shown[point]) for point, (run_rows, _) in points.items()
            for row in run_rows]
    return sorted(rows, key=lambda r: (r.experiment, r.dataset, r.result, r.method, r.mix, r.size, exp_label(r),
                                       r.params, r.run_id, r.init))


def exp_label(row: Row) -> str:
    """What names a row's execution: its DVC experiment, else its pipeline run, else -."""
    return row.exp_name or row.execution or "-"
