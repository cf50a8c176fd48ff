"""MLflow in one place: one parent run per pipeline execution, one nested run per stage."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil

from pas.core.hashing import file_digest

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
INVOCATION_TAG = "pas.invocation"


EXP_WORKSPACE = (".dvc", "tmp", "exps")   # where DVC runs queued and --temp experiments: <repo>/.dvc/tmp/exps/<tmp>


def tracking_uri(cwd: str | Path | None = None) -> str:
    """The tracking URI: MLFLOW_TRACKING_URI if set, else the repository's SQLite file mlflow.db.

    A queued (`dvc exp run --queue`) or `--temp` experiment runs in a throw-away copy under
    <repo>/.dvc/tmp/exps/; it logs into <repo>/mlflow.db so that sweeps land in one store.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    parts = Path(cwd or os.getcwd()).absolute().parts
    for i in range(len(parts) - len(EXP_WORKSPACE)):
        if parts[i:i + len(EXP_WORKSPACE)] == EXP_WORKSPACE:
            return f"sqlite:///{Path(*parts[:i]) / 'mlflow.db'}"
    return DEFAULT_URI


def invocation_id() -> str:
    """Identify the pipeline execution this process belongs to.

    Every stage of one `dvc repro` / `dvc exp run` is a child of the same dvc process, so the
    nearest ancestor running dvc (pid + start time) names the execution. A stage run by hand
    is its own execution.
    """
    proc = psutil.Process()
    for parent in proc.parents():
        try:
            cmdline = " ".join(parent.cmdline())
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        if "dvc" in Path(cmdline.split(" ")[0]).name or " -m dvc" in cmdline or "/dvc " in cmdline + " ":
            return f"dvc-{parent.pid}-{int(parent.create_time())}"
    return f"proc-{proc.pid}-{int(proc.create_time())}"


def _flatten(tree: Mapping[str, Any], leaf: Callable[[Any], Any | None], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested mapping; `leaf` maps each leaf value to what is kept (None: dropped)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, leaf, f"{name}."))
        elif (kept := leaf(value)) is not None:
            flat[name] = kept
    return flat


def _param_value(value: Any) -> str:
    return str(value)[:6000]


def _metric_value(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _parent_run(client: Any, experiment_id: str, invocation: str) -> str:
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{INVOCATION_TAG}` = '{invocation}' and tags.`pas.kind` = 'pipeline'",
        max_results=1
    )
    if found:
        return found[0].info.run_id
    exp_name = os.environ.get("DVC_EXP_NAME")
    name = exp_name or time.strftime("repro-%Y%m%d-%H%M%S")
    tags = {INVOCATION_TAG: invocation, "pas.kind": "pipeline"}
    if exp_name:
        tags["dvc.exp_name"] = exp_name
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    return run.info.run_id


def dataset_record(name: str, path: str | Path) -> dict[str, str]:
    """{name, path, md5} of a dataset file, for model cards and MLflow inputs."""
    return {"name": name, "path": str(path), "md5": file_digest(path, "md5")}


class StageRun:
    """Handle given to a stage inside `stage_run`: log metrics, small artifacts and input datasets."""

    def __init__(self, client: Any, run_id: str, parent_id: str | None = None) -> None:
        self.client, self.run_id, self.parent_id = client, run_id, parent_id

    def log_input_dataset(self, record: Mapping[str, str], context: str = "training") -> None:
        """Record a dataset ({name, path, md5}: the md5 DVC has for it) as an input of this run and its pipeline run."""
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():   # a local path matches several equivalent local source types
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(Path(record["path"]).absolute()))
        dataset = MetaDataset(source, name=record["name"], digest=record["md5"])
        inputs = [DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])]
        for run_id in filter(None, (self.run_id, self.parent_id)):
            self.client.log_inputs(run_id, datasets=inputs)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log every numeric leaf of a nested metrics dict (keys joined with dots)."""
        for key, value in _flatten(metrics, _metric_value).items():
            self.client.log_metric(self.run_id, key, value, step=step or 0)

    def lightning_logger(self) -> Any:
        """A Lightning MLFlowLogger writing per-step/epoch metrics into this stage run."""
        from lightning.pytorch.loggers import MLFlowLogger

        return MLFlowLogger(tracking_uri=tracking_uri(), run_id=self.run_id)

    def log_artifact(self, path: str | Path) -> None:
        """Attach a small file (report, plot) to the stage run."""
        self.client.log_artifact(self.run_id, str(path))

    def log_figures(self, folder: str | Path) -> None:
        """Attach every PNG of a folder (sorted by name) to the stage run."""
        for png in sorted(Path(folder).glob("*.png")):
            self.log_artifact(png)


@contextlib.contextmanager
def stage_run(stage: str, params: Mapping[str, Any], experiment: str) -> Iterator[StageRun]:
    """Open the nested MLflow run `stage` under this execution's parent run in `experiment`."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri())
    existing = client.get_experiment_by_name(experiment)
    experiment_id = existing.experiment_id if existing else client.create_experiment(experiment)
    parent = _parent_run(client, experiment_id, invocation_id())
    run = client.create_run(
        experiment_id,
        run_name=stage,
        tags={"mlflow.parentRunId": parent, "pas.stage": stage, INVOCATION_TAG: invocation_id()},
    )
    run_id = run.info.run_id
    for key, value in _flatten(params, _param_value).items():
        client.log_param(run_id, key, value)
    status = "FAILED"
    try:
        yield StageRun(client, run_id, parent)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
        client.set_terminated(parent, "FINISHED" if status == "FINISHED" else "FAILED")
        log.info("MLflow run %s/%s (%s) -> %s", experiment, stage, run_id, tracking_uri())
