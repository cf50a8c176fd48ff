"""MLflow in one place: one parent run per pipeline execution, one nested run per stage.

MLflow (about 3 s of imports and store set-up per process) is set up once per stage and as late as possible: on the
stage's first tracking call, else when the stage ends; runs still carry the stage's real start time."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil

from pas.core.hashing import file_digest
from pas.core.mlflow_store import open_client, relocate_artifacts, repo_store, tracking_uri
from pas.core.names import safe_name
from pas.core.runtime import dvc_ancestor

log = logging.getLogger(__name__)

INVOCATION_TAG = "pas.invocation"
ERROR_TAG = "pas.error"
PARAMS_DIGEST_TAG = "pas.params_digest"   # sha256 of the whole params file a stage ran with (12 hex)
# MLflow 3 opens an experiment without this tag in the GenAI view; this value is its classic training-runs view
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# the params that tell one experiment from another: the pipeline run's columns in the MLflow runs table
PIPELINE_KEYS = ("size", "seed", "domain", "mix", "models.generator", "models.clip", "pretrain.method",
                 "pretrain.backbone", "pretrain.budget", "pretrain.dataset")


def invocation_id() -> str:
    """Identify the pipeline execution this process belongs to.

    Every stage of one `dvc repro` / `dvc exp run` is a child of the same dvc process, so the
    nearest ancestor running dvc (pid + start time) names the execution. A stage run by hand
    is its own execution.
    """
    parent = dvc_ancestor()
    if parent is not None:
        return f"dvc-{parent.pid}-{int(parent.create_time())}"
    proc = psutil.Process()
    return f"proc-{proc.pid}-{int(proc.create_time())}"


def _flatten(tree: Mapping[str, Any], leaf: Callable[[Any], Any | None], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested mapping; `leaf` maps each leaf value to what is kept (None: dropped).

    Each key goes through safe_name: concept and class names ("brewer's blackbird") are valid MLflow keys.
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{safe_name(str(key))}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, leaf, f"{name}."))
        elif (kept := leaf(value)) is not None:
            flat[name] = kept
    return flat


def _param_value(value: Any) -> str:
    return str(value)[:6000]


def _metric_value(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def source_tags() -> dict[str, str]:
    """Git commit, dirty state and DVC experiment name of this execution, as MLflow tags.

    An experiment (`dvc exp run`, queued or not) runs from DVC_EXP_BASELINE_REV with its params applied, so it
    counts as dirty; DVC_EXP_NAME is its name. Files the pipeline rewrites (dvc.lock, metrics/) are not changes.
    """
    from pas.core.provenance import git_state

    state = git_state(".")
    tags: dict[str, str] = {}
    if commit := os.environ.get("DVC_EXP_BASELINE_REV") or state["commit"]:
        tags["mlflow.source.git.commit"] = commit
    if state["commit"]:
        tags["pas.git.dirty"] = str(state["dirty"]).lower()
    if exp_name := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = exp_name
    return tags


def _parent_run(client: Any, experiment_id: str, invocation: str, params: Mapping[str, Any],
                tags: Mapping[str, str], start_time: int | None = None) -> str:
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{INVOCATION_TAG}` = '{invocation}' and tags.`pas.kind` = 'pipeline'",
        max_results=1
    )
    if found:
        return found[0].info.run_id
    name = os.environ.get("DVC_EXP_NAME") or time.strftime("repro-%Y%m%d-%H%M%S")
    run = client.create_run(experiment_id, start_time=start_time, run_name=name,
                            tags={**tags, INVOCATION_TAG: invocation, "pas.kind": "pipeline"})
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def _log_params(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    params_list = [Param(key, value) for key, value in _flatten(params, _param_value).items()]
    for start in range(0, len(params_list), 100):  # MLflow's log_batch limit for params
        client.log_batch(run_id, params=params_list[start:start + 100])


def chosen_only(params: Mapping[str, Any]) -> dict[str, Any]:
    """params with each section's `method_args` narrowed to its chosen `method` (pretrain logs only the method it runs)."""
    narrowed: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping) and isinstance(value.get("method_args"), Mapping) and "method" in value:
            method = value["method"]
            value = {**value, "method_args": {method: value["method_args"].get(method) or {}}}
        narrowed[key] = value
    return narrowed


def repo_path(path: str | Path) -> str:
    """`path` relative to the repository it lies in (the nearest folder above it holding .dvc), else absolute.

    A queued experiment runs in <repo>/.dvc/tmp/exps/<tmp>/, a copy with its own .dvc: its data/x names data/x.
    """
    full = Path(path).absolute()
    for root in full.parents:
        if (root / ".dvc").is_dir():
            return full.relative_to(root).as_posix()
    return full.as_posix()


def dataset_record(name: str, path: str | Path) -> dict[str, str]:
    """{name, path, md5} of a dataset file, for model cards and MLflow inputs."""
    return {"name": name, "path": str(path), "md5": file_digest(path, "md5")}


class TrackingGuard:
    """Best-effort MLflow: retry a failing call (a locked SQLite file, a server restart) for up to
    PAS_TRACKING_PATIENCE seconds (default 30), then warn once and skip tracking for the rest of the stage.

    Tracking never fails a stage whose outputs are complete, and never aborts training: the numbers are in
    metrics/<stage>.json and DVC either way.
    """

    def __init__(self, stage: str, patience: float | None = None) -> None:
        self.stage, self.down = stage, False
        self.patience = patience if patience is not None else tracking_patience()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs), retried with backoff; None once tracking is given up."""
        if self.down:
            return None
        deadline, wait = time.monotonic() + self.patience, 0.25
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - any tracking failure: retry, then give up tracking only
                if time.monotonic() + wait > deadline:
                    self.down = True
                    log.warning("MLflow tracking failed for stage %s (%s: %s); going on without tracking — the "
                                "stage's outputs and metrics/%s.json are unaffected",
                                self.stage, type(err).__name__, str(err).splitlines()[0][:200], self.stage)
                    return None
                time.sleep(wait)
                wait = min(wait * 2, 4.0)


def tracking_patience() -> float:
    """PAS_TRACKING_PATIENCE: seconds a failing MLflow call is retried before tracking is given up (default 30)."""
    raw = os.environ.get("PAS_TRACKING_PATIENCE", "30")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        from pas.core.config import ConfigError

        raise ConfigError(f"PAS_TRACKING_PATIENCE={raw!r} is not allowed; use a number of seconds >= 0")
    return value


class StageRun:
    """Handle given to a stage inside `stage_run`: log metrics, small artifacts and input datasets.

    Every call is best-effort (TrackingGuard): with no tracking (run_id None) they do nothing. Given an `opener`,
    the runs are opened by the first call that needs them (`open`), so a stage that logs nothing until its work is
    done pays no MLflow set-up before it.
    """

    def __init__(self, client: Any, run_id: str | None, parent_id: str | None = None,
                 guard: TrackingGuard | None = None,
                 opener: Callable[[], tuple[Any, str | None, str | None]] | None = None) -> None:
        self._client, self._run_id, self._parent_id = client, run_id, parent_id
        self._opener = opener
        self.guard = guard or TrackingGuard("stage")

    def open(self) -> None:
        """Set up MLflow and open the stage run (and its pipeline run) now, if that has not happened yet."""
        if self._opener is not None:
            opener, self._opener = self._opener, None
            self._client, self._run_id, self._parent_id = opener()

    @property
    def opened(self) -> bool:
        """Whether MLflow has been set up for this stage (no set-up happens before the first call that needs it)."""
        return self._opener is None

    @property
    def client(self) -> Any:
        """The MlflowClient (opens the runs first)."""
        self.open()
        return self._client

    @property
    def run_id(self) -> str | None:
        """The stage run's id, None without tracking (opens the runs first)."""
        self.open()
        return self._run_id

    @property
    def parent_id(self) -> str | None:
        """The pipeline run's id, None without tracking (opens the runs first)."""
        self.open()
        return self._parent_id

    @property
    def active(self) -> bool:
        """Whether tracking still works for this run."""
        return self.run_id is not None and not self.guard.down

    def log_input_dataset(self, record: Mapping[str, str], context: str = "training") -> None:
        """Record a dataset ({name, path, md5}: the md5 DVC has for it) as an input of this run and its pipeline run."""
        if self.active:
            self.guard.call(self._log_input_dataset, record, context)

    def _log_input_dataset(self, record: Mapping[str, str], context: str) -> None:
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():   # a local path matches several equivalent local source types
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(repo_path(record["path"]))
        dataset = MetaDataset(source, name=record["name"], digest=record["md5"])
        inputs = [DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])]
        for run_id in filter(None, (self.run_id, self.parent_id)):
            self.client.log_inputs(run_id, datasets=inputs)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log every numeric leaf of a nested metrics dict (keys joined with dots, each key a safe_name)."""
        if not self.active:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(key, value, stamp, step or 0) for key, value in _flatten(metrics, _metric_value).items()]
        for start in range(0, len(batch), 1000):  # MLflow's log_batch limit
            self.guard.call(self.client.log_batch, self.run_id, metrics=batch[start:start + 1000])

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log extra params on this stage run (values a stage learns while running, e.g. from a model card)."""
        if self.active:
            self.guard.call(_log_params, self.client, self.run_id, params)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tag this stage run and its pipeline run (words a reader of the runs table must see, e.g. oracle concepts)."""
        if self.active:
            for run_id in filter(None, (self.run_id, self.parent_id)):
                for key, value in tags.items():
                    self.guard.call(self.client.set_tag, run_id, key, str(value))

    def log_parent_metrics(self, metrics: Mapping[str, Any], keep: Callable[[str], bool] | None = None) -> None:
        """Copy numeric leaves of `metrics` (dotted keys; those `keep(key)` accepts) onto the pipeline run too, so
        the runs table compares experiments by their headline numbers without opening each stage run."""
        if not self.active or self.parent_id is None:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        flat = _flatten(metrics, _metric_value)
        batch = [Metric(key, value, stamp, 0) for key, value in flat.items() if keep is None or keep(key)]
        for start in range(0, len(batch), 1000):
            self.guard.call(self.client.log_batch, self.parent_id, metrics=batch[start:start + 1000])

    def lightning_loggers(self) -> list[Any]:
        """[a Lightning MLFlowLogger into this stage run, best-effort like the rest], or [] without tracking."""
        if not self.active:
            return []
        from lightning.pytorch.loggers import MLFlowLogger

        guard = self.guard

        class GuardedMLFlowLogger(MLFlowLogger):
            """MLFlowLogger whose calls go through the stage's TrackingGuard: a locked store never aborts training."""

            def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
                guard.call(super().log_metrics, metrics, step)

            def log_hyperparams(self, params: Any) -> None:
                guard.call(super().log_hyperparams, params)

            def finalize(self, status: str = "success") -> None:
                guard.call(super().finalize, status)

            def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
                guard.call(super().after_save_checkpoint, checkpoint_callback)

        return [GuardedMLFlowLogger(tracking_uri=tracking_uri(), run_id=self.run_id)]

    def log_artifact(self, path: str | Path) -> None:
        """Attach a small file (report, plot) to the stage run."""
        if self.active:
            self.guard.call(self.client.log_artifact, self.run_id, str(path))

    def log_folder(self, folder: str | Path, artifact_path: str, names: Iterable[str]) -> None:
        """Attach the named files of `folder` under `artifact_path` (e.g. a model folder: backbone/config.json)."""
        for name in names:
            if self.active and (Path(folder) / name).is_file():
                self.guard.call(self.client.log_artifact, self.run_id, str(Path(folder) / name), artifact_path)

    def log_figures(self, folder: str | Path) -> None:
        """Attach every PNG of a folder (sorted by name) to the stage run."""
        for png in sorted(Path(folder).glob("*.png")):
            self.log_artifact(png)


def _experiment_id(client: Any, experiment: str) -> str:
    """The experiment's id, created if new; tagged for MLflow's classic training-runs view."""
    existing = client.get_experiment_by_name(experiment)
    if existing is None:
        return client.create_experiment(experiment, tags=EXPERIMENT_KIND)
    for key, value in EXPERIMENT_KIND.items():
        if key not in existing.tags:
            client.set_experiment_tag(existing.experiment_id, key, value)
    return existing.experiment_id


def _open_run(client: Any, guard: TrackingGuard, stage: str, params: Mapping[str, Any],
              experiment: str, pipeline_params: Mapping[str, Any], uri: str, start_time: int | None = None,
              extra_tags: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """(run id, parent run id) of a new stage run with its params, each call guarded; (None, None) on failure.
    `start_time` (ms since the epoch) is when the stage started, which may be well before this call; `extra_tags`
    go on the stage run and the pipeline run."""
    exp_id = guard.call(_experiment_id, client, experiment)
    if exp_id and (root := repo_store(uri)) is not None:
        try:
            relocate_artifacts(client, root)
        except Exception as err:  # noqa: BLE001 - artifacts may land in the old folder; never fail the stage for it
            log.warning("could not re-point MLflow artifact locations at %s/mlruns (%s: %s)", root,
                        type(err).__name__, err)
    source = source_tags()
    parent = guard.call(_parent_run, client, exp_id, invocation_id(), pipeline_params, source,
                        start_time) if exp_id else None
    tags = {**source, "mlflow.parentRunId": parent, "pas.stage": stage, INVOCATION_TAG: invocation_id()}
    run = guard.call(client.create_run, exp_id, start_time=start_time, run_name=stage, tags=tags) if parent else None
    if run is None:
        return None, None
    guard.call(_log_params, client, run.info.run_id, chosen_only(params))
    for run_id in (run.info.run_id, parent):
        for key, value in (extra_tags or {}).items():
            guard.call(client.set_tag, run_id, key, str(value))
    return run.info.run_id, parent


@contextlib.contextmanager
def stage_run(stage: str, params: Mapping[str, Any], experiment: str,
              pipeline_params: Mapping[str, Any] | None = None,
              tags: Mapping[str, str] | None = None) -> Iterator[StageRun]:
    """The nested MLflow run `stage` under this execution's parent run in `experiment` (best-effort).

    `pipeline_params` (see PIPELINE_KEYS) go on the parent run when this stage creates it; `tags` go on both runs.
    MLflow is set up by the stage's first tracking call, else when the block ends (a stage that logs nothing still
    gets its run), never on entry; the runs start at the time the block was entered. A stage that raises ends FAILED
    (KILLED on Ctrl-C), its run and the parent tagged `pas.error` with the error's message.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    guard = TrackingGuard(stage)            # a bad PAS_TRACKING_PATIENCE stops the stage here, before its work
    uri, started = tracking_uri(), int(time.time() * 1000)

    def opener() -> tuple[Any, str | None, str | None]:
        client = guard.call(open_client, uri)   # a new SQLite store's tables are made by one process at a time
        if client is None:
            return None, None, None
        run_id, parent = _open_run(client, guard, stage, params, experiment, pipeline_params or {}, uri, started,
                                   tags or {})
        return client, run_id, parent

    run = StageRun(None, None, None, guard, opener=opener)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        if run.run_id is not None:         # a stage that failed before logging anything opens its run now
            message = f"{stage}: {type(err).__name__}: {err}"[:5000]   # MLflow tag values hold 8,000 characters
            for run_id in (run.run_id, run.parent_id):
                guard.call(run.client.set_tag, run_id, ERROR_TAG, message)
        raise
    finally:
        if run.run_id is not None:         # opens now if the stage logged nothing: every stage has its run
            guard.call(run.client.set_terminated, run.run_id, status)
            guard.call(run.client.set_terminated, run.parent_id, status)
            log.info("MLflow run %s/%s (%s) -> %s", experiment, stage, run.run_id, uri)
