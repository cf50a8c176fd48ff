"""What every stage entry point shares: params loading, one-line errors, metrics and MLflow.

Imports nothing heavy (no torch, no MLflow): a stage pays for what its own work imports, and MLflow is set up when
the stage first logs, after its work at the latest (pas.core.tracking.stage_run)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pas.core.config import ConfigError, PasError, load_params, parse_size, top_level, user_error
from pas.core.provenance import params_digest
from pas.core.runtime import configure_threads, dvc_ancestor, quick_exit, setup_logging, stop_when_orphaned
from pas.core.atomic import write_json
from pas.core.run_facts import split_run_facts
from pas.core.tracking import PARAMS_DIGEST_TAG, PIPELINE_KEYS, StageRun, stage_run

log = logging.getLogger(__name__)

Body = Callable[[argparse.Namespace, dict[str, Any], StageRun], dict[str, Any]]


def run_stage(stage: str, keys: Sequence[str], parser: argparse.ArgumentParser, body: Body,
              argv: Sequence[str] | None = None, metrics_name: str | None = None) -> None:
    """Parse paths, load only the declared params `keys`, run `body`, write metrics/<stage>.json.

    `metrics_name` overrides the metrics file's stem (evaluate writes the contract file eval.json).

    `body(args, params, run)` returns the stage's metrics. A PasError (bad param, missing or
    unusable input) is printed as one line naming what is wrong, and the process exits with 2.

    The DEBUG lines `<stage>: work starts` (just before `body`) and `<stage>: work done` (just after it returns)
    mark the stage's own work; benchmarks/stage_overhead.py times a stage's start-up up to the first.
    """
    setup_logging()
    quick_exit()
    args = parser.parse_args(argv)
    if (dvc := dvc_ancestor()) is not None:
        stop_when_orphaned(dvc)
    try:
        configure_threads()
        everything = load_params(args.params)
        params = select(everything, keys)
        top_level(params)  # a bad size/seed/domain/oversample/mix stops here, before any work or tracking
        check_command_size(getattr(args, "size", None), everything, args.params)
        experiment = f"pas-{everything.get('domain', 'default')}"  # grouping only, not an input
        digest = {PARAMS_DIGEST_TAG: params_digest(everything)}   # one execution's whole params, for compare
        with stage_run(stage, params, experiment, select(everything, PIPELINE_KEYS), tags=digest) as run:
            log.debug("%s: work starts", stage)
            metrics = body(args, params, run)
            log.debug("%s: work done", stage)
            results, _ = split_run_facts(metrics)   # timings and work counts: MLflow and the log, never DVC's files
            write_json(results, Path(args.metrics_dir) / f"{metrics_name or stage}.json")
            run.log_metrics(metrics)
    except (PasError, FileNotFoundError) as err:   # bad input or a missing file: one line; anything else is a bug
        if os.environ.get("PAS_LOG_LEVEL") == "DEBUG":   # pas -v / PAS_LOG_LEVEL=DEBUG: the whole traceback
            raise
        print(f"pas {stage}: error: {user_error(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    log.info("%s done: %s", stage, flat or f"metrics in {Path(args.metrics_dir) / f'{metrics_name or stage}.json'}")


def check_command_size(size: str | None, everything: dict[str, Any], source: str) -> None:
    """The `--size` dvc.yaml puts in a command must be the params size (a stale or hand-edited command is refused)."""
    if size is not None and parse_size(size, "--size") != parse_size(everything.get("size"), "size"):
        raise ConfigError(f"--size {size} differs from size={everything.get('size')!r} in {source}; run the stage "
                          "through dvc repro (dvc.yaml passes --size ${size})")


def select(everything: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The sub-dict of params named by `keys` (dotted keys pick one leaf: pool_index.source)."""
    picked: dict[str, Any] = {}
    for key in keys:
        head, _, leaf = key.partition(".")
        if head not in everything:
            continue
        if leaf:
            section = everything[head] or {}
            if leaf in section:
                picked.setdefault(head, {})[leaf] = section[leaf]
        else:
            picked[head] = everything[head]
    return picked


def stage_parser(stage: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every stage has (params file, metrics folder)."""
    parser = argparse.ArgumentParser(prog=f"stages/{stage}.py", description=(doc or "").strip().splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--metrics-dir", default="metrics", help="where metrics/<stage>.json goes")
    parser.add_argument("--size", default=None,
                        help="the params size, repeated in dvc.yaml's cmd so DVC's run cache keys on it "
                             "(treeverse/dvc#10296); checked against params")
    return parser


def command_parser(command: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of `pas <command>` (every user command uses it): prog `pas <command>` in usage and errors, the
    doc's first line as description, and each option's default shown in --help."""
    return argparse.ArgumentParser(prog=f"pas {command}", description=(doc or "").strip().splitlines()[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
