"""`pas show [EXPERIMENT]`: one terminal page for the workspace or an experiment: params that differ from HEAD, the
dataset funnel, the headline metrics, and where the report, plots and MLflow run are."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pas.core.config import PasError, load_params, read_yaml12
from pas.core.provenance import params_digest
from pas.core.tracking import PARAMS_DIGEST_TAG
from pas.evaluate.summary import PROTOCOLS

SUMMARY = "metrics/summary.json"
PARAMS = "params.yaml"   # the one params file of dvc.yaml (every stage reads its keys from it)


def _dvc_started(*args: str) -> subprocess.Popen[str]:
    """A dvc command started in the current repository (this env's dvc), running while pas does other work."""
    return subprocess.Popen([sys.executable, "-m", "dvc", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _dvc_output(proc: subprocess.Popen[str]) -> str:
    """stdout of a started dvc command once it ends; a PasError with its message when it failed."""
    out, err = proc.communicate()
    if proc.returncode:
        message = (err.strip().splitlines() or ["dvc failed"])[-1].removeprefix("ERROR: ")
        raise PasError(f"dvc {' '.join(proc.args[3:])}: {message}")
    return out


def params_diff_started(experiment: str | None) -> subprocess.Popen[str]:
    """`dvc params diff` against HEAD, started (it takes seconds: pas show reads MLflow meanwhile)."""
    return _dvc_started("params", "diff", *([] if experiment is None else ["HEAD", experiment]), "--json")


def read_summary(experiment: str | None) -> dict[str, Any]:
    """metrics/summary.json of the workspace, or as committed in an experiment (name or rev)."""
    if experiment is None:
        if not Path(SUMMARY).is_file():
            raise PasError(f"{SUMMARY} not found; run the pipeline first (dvc repro)")
        return json.loads(Path(SUMMARY).read_text())
    import dvc.api

    try:
        return json.loads(dvc.api.read(SUMMARY, repo=".", rev=experiment))
    except Exception as err:  # noqa: BLE001 - an unknown rev or a run without the file: one line either way
        raise PasError(f"no {SUMMARY} in experiment {experiment!r} ({type(err).__name__}: {err}); "
                       "list them with dvc exp show") from err


def params_changed(experiment: str | None, started: subprocess.Popen[str] | None = None) -> dict[str, tuple[Any, Any]]:
    """{param: (HEAD value, this value)} for every param that differs from HEAD (from `started`, when given)."""
    diff = json.loads(_dvc_output(started or params_diff_started(experiment)) or "{}")
    return {key: (change.get("old"), change.get("new")) for changes in diff.values() for key, change in
            sorted(changes.items())}


def head_params_text(path: str = PARAMS) -> str | None:
    """`path` as committed at HEAD (git show), or None when HEAD does not have it (or there is no commit yet)."""
    done = subprocess.run(["git", "show", f"HEAD:./{path}"], capture_output=True, text=True)
    if done.returncode == 0:
        return done.stdout
    if subprocess.run(["git", "rev-parse", "--git-dir"], capture_output=True).returncode != 0:
        raise PasError("not in a git repository: pas show compares the params with HEAD's (git init, commit)")
    return None


def workspace_params_changed(path: str = PARAMS) -> dict[str, tuple[Any, Any]]:
    """What `dvc params diff` reports for the workspace's params file against HEAD, computed here from the files'
    contents (never git's index, whose stat cache can take a rewritten file of the same size for unchanged): both
    read as YAML 1.2 like DVC, lists as their str, nested keys flattened with dots, and compared by DVC's own diff
    (dvc/repo/metrics/diff.py _diff: format_dict, then dvc.utils.diff.diff)."""
    from dvc.utils.diff import diff, format_dict

    committed = head_params_text(path)
    if committed is None and subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"],
                                            capture_output=True).returncode != 0:
        return {}                      # no commit yet: dvc params diff reports nothing either
    old = {} if committed is None else read_yaml12(committed) or {}
    new = read_yaml12(Path(path).read_text()) if Path(path).is_file() else {}
    changes = diff({path: {"data": format_dict(old)}}, {path: {"data": format_dict(new)}}).get(path, {})
    return {key: (change.get("old"), change.get("new")) for key, change in sorted(changes.items())}


def funnel_lines(summary: dict[str, Any]) -> list[str]:
    """The dataset funnel: sources -> candidates -> filter -> dedup -> curated."""
    get = summary.get
    return [f"  generated {get('generated')} + retrieved {get('retrieved')} = {get('candidates')} candidates",
            f"  -> {get('kept_by_filter')} kept by the filter -> {get('duplicates_removed')} near-duplicates and "
            f"{get('contaminated_removed')} evaluation look-alikes removed"
            + (f" -> {get('balanced_out')} left out by dedup.balance" if "balanced_out" in summary else ""),
            f"  -> {get('curated')} curated ({100 * (get('real_share') or 0):.0f}% real), pretrained on "
            f"{get('pretrain_images_seen')} images seen"]


def metric_lines(summary: dict[str, Any]) -> list[str]:
    """Top-1 per init and protocol, the gains, and the honesty flags."""
    baselines = {key.split(".")[1] for key in summary if key.startswith("gain.")}
    inits = sorted(dict.fromkeys(key.split(".")[1] for key in summary if key.startswith("top1.")),
                   key=lambda init: (init in baselines, init))        # the reference (no gain of its own) first
    lines = ["  " + f"{'top-1 %':<10}" + "".join(f"{p:>9}" for p in PROTOCOLS)]
    for init in inits:
        cells = [summary.get(f"top1.{init}.{p}") for p in PROTOCOLS]
        lines.append(f"  {init:<10}" + "".join(f"{'—' if c is None else f'{100 * c:.1f}':>9}" for c in cells))
    gains = [f"{key.split('.')[1]} {100 * value:+.1f}" for key, value in summary.items() if key.startswith("gain.")]
    if gains:
        lines.append("  gain of the reference (linear, points): " + ", ".join(gains))
    if summary.get("mixed_architecture"):
        lines.append("  CONFOUNDED: a gain compares different architectures (see metrics/eval.md)")
    if summary.get("oracle_concepts"):
        lines.append("  ORACLE CONCEPTS: the shipped bank names downstream classes (see metrics/eval.md)")
    if summary.get("oracle_exemplars"):
        lines.append("  ORACLE EXEMPLARS: the exemplar filter curated toward downstream images (see metrics/filter.json)")
    return lines


def newest_pipeline_run(uri: str, tags: dict[str, str]) -> tuple[str, str] | None:
    """(run id, run name) of the newest FINISHED pipeline run (tag pas.kind=pipeline) of a `pas-*` experiment that
    carries `tags`, as MlflowClient.search_runs orders them (start time, newest first, then run id); active
    experiments and runs only. A SQLite store is read directly (newest_in_sqlite), which spares pas show MLflow's
    import (seconds); any other store goes through MlflowClient."""
    wanted = {"pas.kind": "pipeline", **tags}
    if uri.startswith("sqlite:///"):
        return newest_in_sqlite(Path(uri.removeprefix("sqlite:///")), wanted)
    return newest_through_mlflow(uri, wanted)


def newest_in_sqlite(path: Path, tags: dict[str, str]) -> tuple[str, str] | None:
    """newest_through_mlflow's answer read from MLflow's SQL store file (its tables experiments, runs, tags),
    read-only."""
    import sqlite3

    checks = " ".join("and exists (select 1 from tags t where t.run_uuid = r.run_uuid and t.key = ? and t.value = ?)"
                      for _ in tags)
    sql = ("select r.run_uuid, r.name from runs r join experiments e on e.experiment_id = r.experiment_id "
           "where e.name like 'pas-%' and e.lifecycle_stage = 'active' and r.lifecycle_stage = 'active' "
           f"and r.status = 'FINISHED' {checks} order by r.start_time desc, r.run_uuid limit 1")
    with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as db:
        row = db.execute(sql, [part for item in tags.items() for part in item]).fetchone()
    return None if row is None else (row[0], row[1])


def newest_through_mlflow(uri: str, tags: dict[str, str]) -> tuple[str, str] | None:
    """(run id, run name) of the newest FINISHED run with `tags` in an active `pas-*` experiment of store `uri`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments() if e.name.startswith("pas-")]
    query = " and ".join(["attributes.status = 'FINISHED'", *(f"tags.`{k}` = '{v}'" for k, v in tags.items())])
    runs = client.search_runs(experiments, query, order_by=["attributes.start_time DESC"], max_results=1) \
        if experiments else []
    return (runs[0].info.run_id, runs[0].info.run_name) if runs else None


def pipeline_run(experiment: str | None) -> str:
    """Where the MLflow pipeline run of the workspace (the latest) is, or how to find an experiment's."""
    from pas.core.mlflow_store import read_tracking_uri

    try:
        uri = read_tracking_uri()
    except PasError as err:
        return f"  MLflow: {err}"
    if experiment:
        tags = {"dvc.exp_name": experiment}
    else:   # the workspace's results come from the newest finished run of its params file
        tags = {PARAMS_DIGEST_TAG: params_digest(load_params(PARAMS))}
    caveat = ""
    if (run := newest_pipeline_run(uri, tags)) is None and experiment is None \
            and (run := newest_pipeline_run(uri, {})) is not None:
        caveat = " (the newest finished one: no run recorded these params' digest, so it may be another's)"
    if run is None:
        return f"  MLflow: no finished pipeline run{f' of {experiment}' if experiment else ''} in {uri}"
    return (f"  MLflow: run {run[0]} ({run[1]}){caveat} in {uri}; "
            f"`mlflow ui --backend-store-uri {uri}`")


def where_lines(experiment: str | None) -> list[str]:
    """Where the report, evaluation and plots are: the workspace's files, or how to get an experiment's."""
    if experiment is None:
        return ["  dataset report: reports/dataset.html   evaluation: metrics/eval.md   plots: plots/"]
    return [f"  dataset report, evaluation, plots: the workspace's files are not {experiment}'s; "
            f"`dvc exp apply {experiment}` puts them there"]


def render(experiment: str | None) -> str:
    """The page."""
    summary = read_summary(experiment)
    if experiment is None:             # the workspace: from the files (no dvc process, whose start-up takes seconds)
        changed, mlflow_line = workspace_params_changed(), pipeline_run(None)
    else:                              # an experiment's rev is DVC's to resolve
        diff = params_diff_started(experiment)
        try:
            mlflow_line = pipeline_run(experiment)       # while dvc computes the params diff
        except BaseException:
            diff.kill()
            diff.wait()
            raise
        changed = params_changed(experiment, diff)
    lines = [f"pas show: {experiment or 'workspace'}", "", "Params that differ from HEAD:"]
    lines += [f"  {key}: {old!r} -> {new!r}" for key, (old, new) in changed.items()] or ["  none"]
    lines += ["", "Dataset funnel:", *funnel_lines(summary), "", "Headline metrics (metrics/summary.json):",
              *metric_lines(summary), "", "Where things are:", *where_lines(experiment), mlflow_line]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: pas show [EXPERIMENT]."""
    from pas.core.stage import command_parser

    parser = command_parser("show", __doc__)
    parser.add_argument("experiment", nargs="?",
                        help="an experiment name or rev (dvc exp show); default: the workspace")
    args = parser.parse_args(argv)
    if not Path("dvc.yaml").is_file():
        raise PasError("not in a pas repository (no dvc.yaml here); cd into one")
    print(render(args.experiment))
    return 0
