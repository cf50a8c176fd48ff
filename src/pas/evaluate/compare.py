"""Compare experiments: read every finished `evaluate` run from MLflow -> markdown + CSV tables and a PNG plot.

    dvc exp run --queue -S size=300 && dvc exp run --queue -S size=2000 && dvc queue start
    python -m pas.evaluate.compare --out reports/compare            # compare.md, compare.csv, compare.png

Each evaluate run carries its experiment's coordinates as params (size, mix.*, pretrain.method,
pretrain.backbone) and its results as metrics `<dataset>.<init>.<result>.top1`. Runs with the same
coordinates are the same point: the latest one wins. The plot shows top-1 against `size` (log axis)
for one result (default linear), a line per init, method and source mix.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pas.core.config import PasError, parse_size
from pas.core.shards import atomic_path

log = logging.getLogger(__name__)

FIELDS = ("experiment", "run_id", "exp_name", "size", "method", "backbone", "mix", "budget", "images_seen", "dataset",
          "init", "result", "top1", "top1_std", "top5", "label_free_score")
_SKIP = {"gain", "elfis_gain", "summary"}


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
    budget: str = "-"        # pretrain.budget in images, or "epochs" (a fixed number of passes: compute grows with size)
    images_seen: str = "-"   # images the pretraining actually trained on (steps x global batch)


def _mix(params: dict[str, str]) -> str:
    parts = sorted((k.split(".", 1)[1], v) for k, v in params.items() if k.startswith("mix."))
    return " ".join(f"{name}={value}" for name, value in parts) or "-"


def _rows_of_run(run: Any, experiment: str, exp_name: str) -> list[Row]:
    params, metrics = run.data.params, run.data.metrics
    if "size" not in params:
        log.warning("evaluate run %s has no size param; skipped (logged before pas.evaluate.compare existed?)", run.info.run_id)
        return []
    coords = dict(experiment=experiment, run_id=run.info.run_id, exp_name=exp_name, size=parse_size(params["size"]),
                  method=params.get("pretrain.method", "-"), backbone=params.get("pretrain.backbone", "-"),
                  mix=_mix(params), budget=params.get("pretrain.budget", "-"),
                  images_seen=params.get("pretrain.images_seen", "-"))
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


def collect(tracking_uri: str, experiments: Sequence[str] = ()) -> list[Row]:
    """Rows of every finished evaluate run (latest per coordinates) in the named or all pas-* experiments."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = [e for e in client.search_experiments() if (e.name in experiments if experiments else
                                                        e.name.startswith("pas-"))]
    if not found:
        raise PasError(f"no MLflow experiment {' or '.join(experiments) or 'named pas-*'} at {tracking_uri}; "
                       "run the pipeline (dvc repro / dvc exp run) first")
    runs = client.search_runs([e.experiment_id for e in found], order_by=["attributes.start_time DESC"],
                              filter_string="tags.`pas.stage` = 'evaluate' and attributes.status = 'FINISHED'")
    names = {e.experiment_id: e.name for e in found}
    seen: set[tuple] = set()
    rows: list[Row] = []
    for run in runs:  # newest first: the first run of each coordinate set wins
        parent = run.data.tags.get("mlflow.parentRunId")
        exp_name = client.get_run(parent).data.tags.get("dvc.exp_name", "") if parent else ""
        run_rows = _rows_of_run(run, names[run.info.experiment_id], exp_name)
        key = (names[run.info.experiment_id], *(run_rows[0].__dict__[f] for f in ("size", "method", "backbone", "mix"))) \
            if run_rows else None
        if key is None or key in seen:
            continue
        seen.add(key)
        rows += run_rows
    return sorted(rows, key=lambda r: (r.experiment, r.dataset, r.result, r.method, r.mix, r.size, r.init))


def write_csv(rows: list[Row], path: Path) -> None:
    """All rows, one per (experiment, dataset, init, result)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(row) for row in rows)


def _pct(value: float | None, sign: str = "") -> str:
    return "—" if value is None else f"{100 * value:{sign}.1f}"


def render_markdown(rows: list[Row], reference: str, results: Sequence[str]) -> str:
    """A table per (dataset, result): a row per experiment, top-1 per init, and reference-minus-baseline gains."""
    lines = ["# Experiment comparison", "", "Test top-1 in %; gains in points.", ""]
    for dataset in sorted({r.dataset for r in rows}):
        for result in results:
            chosen = [r for r in rows if r.dataset == dataset and r.result == result]
            if not chosen:
                continue
            inits = sorted({r.init for r in chosen}, key=lambda i: (i != reference, i))
            baselines = [i for i in inits if i != reference]
            points = sorted({(r.size, r.method, r.backbone, r.mix, r.exp_name, r.budget, r.images_seen)
                             for r in chosen})
            head = ["size", "method", "backbone", "mix", "exp", "budget", "images seen", *inits,
                    *(f"{reference} − {b}" for b in baselines if reference in inits)]
            lines += [f"## {dataset}: {result}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for point in points:
                top1 = {r.init: r.top1 for r in chosen
                        if (r.size, r.method, r.backbone, r.mix, r.exp_name, r.budget, r.images_seen) == point}
                gains = [_pct(top1[reference] - top1[b], "+") if reference in top1 and b in top1 else "—"
                         for b in baselines] if reference in inits else []
                lines.append("| " + " | ".join([str(point[0]), *point[1:4], point[4] or "-", *point[5:7],
                                                 *(_pct(top1.get(i)) for i in inits), *gains]) + " |")
            lines.append("")
            lines += _compute_note(chosen)
    return "\n".join(lines + label_free_ranking(rows, reference, results[0] if results else "linear"))


def _compute_note(rows: list[Row]) -> list[str]:
    """A warning when points of different sizes trained on different numbers of images (a fixed epoch count)."""
    seen = {r.images_seen for r in rows}
    if len({r.size for r in rows}) > 1 and (len(seen) > 1 or "epochs" in {r.budget for r in rows}):
        return ["**Unequal compute: these points trained for a number of epochs, so a larger dataset also got "
                "more training (images seen differ); set pretrain.budget to compare sizes at equal compute.**", ""]
    return []


def label_free_ranking(rows: list[Row], reference: str, result: str) -> list[str]:
    """Experiments ranked by LeJEPA's held-out loss (no labels), beside the reference init's downstream top-1, and
    the Spearman correlation of the two rankings: how far the label-free score can be trusted on this domain."""
    from scipy.stats import spearmanr

    scored = [r for r in rows if r.label_free_score is not None and r.init == reference and r.result == result]
    if not scored:
        return []
    lines = ["## Label-free ranking (LeJEPA held-out loss, lower is better)", ""]
    for dataset in sorted({r.dataset for r in scored}):
        mine = sorted((r for r in scored if r.dataset == dataset), key=lambda r: r.label_free_score)
        lines += [f"### {dataset}: {reference} {result} top-1", "", "| rank | size | mix | exp | loss | top-1 |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {i} | {r.size} | {r.mix} | {r.exp_name or '-'} | {r.label_free_score:.4f} | {_pct(r.top1)} |"
                  for i, r in enumerate(mine, 1)]
        if len(mine) >= 3:
            rho = spearmanr([-r.label_free_score for r in mine], [r.top1 for r in mine]).statistic
            lines += ["", f"Spearman rank correlation of (− loss) with top-1: **{rho:+.2f}** over {len(mine)} "
                      "experiments (+1: the loss orders them exactly as the labels do)."]
        else:
            lines += ["", f"Only {len(mine)} scored experiment(s): a rank correlation needs at least 3."]
        lines.append("")
    return lines


def plot(rows: list[Row], result: str, path: Path) -> bool:
    """top-1 against size for `result`: a panel per dataset, a line per (init, method, mix)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen = [r for r in rows if r.result == result]
    if not chosen:
        return False
    datasets = sorted({r.dataset for r in chosen})
    fig = Figure(figsize=(6 * len(datasets), 4.5))
    FigureCanvasAgg(fig)
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v"]
    methods = sorted({r.method for r in chosen})
    mixes = sorted({r.mix for r in chosen})
    for k, dataset in enumerate(datasets):
        ax = fig.add_subplot(1, len(datasets), k + 1)
        lines = sorted({(r.init, r.method, r.mix) for r in chosen if r.dataset == dataset})
        for init, method, mix in lines:
            points = sorted((r.size, r.top1) for r in chosen
                            if (r.dataset, r.init, r.method, r.mix) == (dataset, init, method, mix))
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=markers[methods.index(method) % 5],
                    linestyle=styles[mixes.index(mix) % 4], label=f"{init} · {method} · {mix}")
        ax.set_xscale("log")
        ax.set(xlabel="size (curated images)", ylabel="test top-1", title=f"{dataset}: {result}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return True


def compare(tracking_uri: str, out_dir: str | Path, experiments: Sequence[str] = (), reference: str = "pas",
            result: str = "linear") -> dict[str, Any]:
    """Write compare.md, compare.csv and compare.png into out_dir; return counts and paths."""
    rows = collect(tracking_uri, experiments)
    if not rows:
        raise PasError(f"no finished evaluate run with results at {tracking_uri}; run the pipeline first")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    order = sorted({r.result for r in rows}, key=lambda n: (n != result, n))
    with atomic_path(out_dir / "compare.md") as tmp:
        tmp.write_text(render_markdown(rows, reference, order))
    write_csv(rows, out_dir / "compare.csv")
    plotted = plot(rows, result, out_dir / "compare.png")
    experiments_found = {(r.experiment, r.size, r.method, r.backbone, r.mix) for r in rows}
    log.info("compared %d experiment point(s), %d rows -> %s", len(experiments_found), len(rows), out_dir)
    return {"points": len(experiments_found), "rows": len(rows), "plot": plotted}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: pas compare [--experiment pas-animals] [--out reports/compare] [--result linear]."""
    from pas.core.runtime import setup_logging
    from pas.core.stage import command_parser
    from pas.core.mlflow_store import read_tracking_uri

    parser = command_parser("compare", __doc__.strip())
    parser.add_argument("--experiment", action="append", default=[], help="MLflow experiment (repeatable); "
                        "default: every pas-* experiment")
    parser.add_argument("--out", default="reports/compare", help="folder for compare.md, compare.csv, compare.png")
    parser.add_argument("--reference", default="pas", help="init whose gain over the others is tabulated")
    parser.add_argument("--result", default="linear", help="result plotted against size (linear, knn, full, ...)")
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        summary = compare(read_tracking_uri(args.tracking_uri), args.out, args.experiment, args.reference, args.result)
    except PasError as err:
        print(f"pas compare: error: {err}", file=sys.stderr)
        return 2
    print(f"{summary['points']} experiment point(s) -> {args.out}/compare.md, compare.csv"
          + (", compare.png" if summary["plot"] else f" (no {args.result!r} result to plot)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
