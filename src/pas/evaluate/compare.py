"""Compare experiments: read every finished `evaluate` run from MLflow -> markdown + CSV tables and a PNG plot.

    dvc exp run --queue -S size=300 && dvc exp run --queue -S size=2000 && dvc queue start
    python -m pas.evaluate.compare --out reports/compare            # compare.md, compare.csv, compare.png

Each evaluate run carries its experiment's coordinates as params (size, mix.*, pretrain.method,
pretrain.backbone) and its results as metrics `<dataset>.<init>.<result>.top1`. A point is one pipeline
execution (pas.evaluate.compare_runs): re-runs of one params file (its digest, tagged by every stage run)
collapse into the newest; the `exp` column and the params that differ between points tell the rows apart. A gain between
inits of different architectures (evaluate's `pas.comparison` tag) is marked CONFOUNDED in compare.md
and compare.csv; a run logged before that tag existed says "architecture not recorded". The plot shows
top-1 against `size` (log axis) for one result (default linear), a line per init, method and source mix.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pas.core.config import PasError
from pas.core.shards import atomic_path
from pas.evaluate.compare_runs import CONFOUNDED, SAME, UNRECORDED, Row, arch_check, collect, exp_label

log = logging.getLogger(__name__)

FIELDS = ("experiment", "run_id", "parent_run_id", "exp_name", "execution", "size", "method", "backbone", "mix",
          "budget", "images_seen", "params", "dataset", "init", "result", "top1", "top1_std", "top5", "gain",
          "gain_comparison", "comparison", "label_free_score")
def write_csv(rows: list[Row], path: Path, reference: str = "pas") -> None:
    """All rows, one per (point, dataset, init, result), with the reference's gain over the row's init and whether
    that gain compares one architecture (gain_comparison: same / CONFOUNDED / not recorded)."""
    refs = {(r.run_id, r.dataset, r.result): r for r in rows if r.init == reference}
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            ref = refs.get((row.run_id, row.dataset, row.result)) if row.init != reference else None
            writer.writerow({**dataclasses.asdict(row), "comparison": row.comparison or UNRECORDED,
                             "gain": ref.top1 - row.top1 if ref else None,
                             "gain_comparison": arch_check(row.comparison, reference, row.init) if ref else ""})


def _pct(value: float | None, sign: str = "") -> str:
    return "—" if value is None else f"{100 * value:{sign}.1f}"


def render_markdown(rows: list[Row], reference: str, results: Sequence[str]) -> str:
    """A table per (dataset, result): a row per experiment, top-1 per init, and reference-minus-baseline gains."""
    lines = ["# Experiment comparison", "", "Test top-1 in %; gains in points.", ""]
    extra = any(r.params for r in rows)   # a params column only when points differ beyond the columns
    for experiment, dataset in panels(rows):
        for result in results:
            chosen = [r for r in rows if (r.experiment, r.dataset, r.result) == (experiment, dataset, result)]
            if not chosen:
                continue
            inits = sorted({r.init for r in chosen}, key=lambda i: (i != reference, i))
            baselines = [i for i in inits if i != reference] if reference in inits else []
            points: dict[str, dict[str, Row]] = {}
            for r in chosen:   # already in table order
                points.setdefault(r.run_id, {})[r.init] = r
            head = ["size", "method", "backbone", "mix", "exp", "budget", "images seen", *(["params"] if extra else []),
                    *inits, *(f"{reference} − {b}" for b in baselines)]
            lines += [f"## {panel_title(rows, experiment, dataset)}: {result}", "",
                      *_architecture_lines(list(points.values()), reference, baselines),
                      "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for point in points.values():
                r = next(iter(point.values()))
                lines.append("| " + " | ".join([*_coordinates(r), r.budget, r.images_seen,
                                                 *([r.params or "-"] if extra else []),
                                                 *(_pct(point[i].top1 if i in point else None) for i in inits),
                                                 *(_gain_cell(point, reference, b) for b in baselines)]) + " |")
            lines.append("")
            lines += _compute_note(chosen)
    return "\n".join(lines + label_free_ranking(rows, reference, results[0] if results else "linear"))


def panels(rows: list[Row]) -> list[tuple[str, str]]:
    """(MLflow experiment, downstream dataset) pairs: a table or plot panel each, so domains never share one."""
    return sorted({(r.experiment, r.dataset) for r in rows})


def panel_title(rows: list[Row], experiment: str, dataset: str) -> str:
    """The dataset, prefixed with its experiment (pas-<domain>) when the rows hold more than one."""
    return f"{experiment} · {dataset}" if len({r.experiment for r in rows}) > 1 else dataset


def _coordinates(row: Row) -> list[str]:
    return [str(row.size), row.method, row.backbone, row.mix, exp_label(row)]


def _label(row: Row) -> str:
    return " · ".join(_coordinates(row)) + (f" · {row.params}" if row.params else "")


def _gain_cell(point: dict[str, Row], reference: str, baseline: str) -> str:
    """reference − baseline in points, suffixed with the architecture check unless both share one architecture."""
    if reference not in point or baseline not in point:
        return "—"
    check = arch_check(point[reference].comparison, reference, baseline)
    return _pct(point[reference].top1 - point[baseline].top1, "+") + ("" if check == SAME else f" ({check})")


def _architecture_lines(points: list[dict[str, Row]], reference: str, baselines: list[str]) -> list[str]:
    """A bold CONFOUNDED line naming the rows whose gain compares architectures; a note for unrecorded ones."""
    found: dict[str, list[str]] = {CONFOUNDED: [], UNRECORDED: []}
    for point in points:
        if reference in point:
            checks = {b: arch_check(point[reference].comparison, reference, b) for b in baselines if b in point}
            for check, named in found.items():
                if pairs := [f"{reference} − {b}" for b, c in checks.items() if c == check]:
                    named.append(f"{_label(point[reference])} ({', '.join(pairs)})")
    lines = []
    if found[CONFOUNDED]:
        named = "; ".join(found[CONFOUNDED])
        lines += [(f"**CONFOUNDED: these gains compare different architectures, so they mix architecture with "
                   f"pretraining data and are no evidence for or against the data: {named}.**"), ""]
    if found[UNRECORDED]:
        lines += [(f"A gain marked ({UNRECORDED}) comes from an evaluate run logged before evaluate tagged "
                   "pas.comparison: it may compare different architectures."), ""]
    return lines


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
    for experiment, dataset in panels(scored):
        mine = sorted((r for r in scored if (r.experiment, r.dataset) == (experiment, dataset)),
                      key=lambda r: r.label_free_score)
        lines += [f"### {panel_title(scored, experiment, dataset)}: {reference} {result} top-1", "",
                  "| rank | size | mix | exp | loss | top-1 |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {i} | {r.size} | {r.mix} | {exp_label(r)} | {r.label_free_score:.4f} | {_pct(r.top1)} |"
                  for i, r in enumerate(mine, 1)]
        if len(mine) >= 3:
            rho = spearmanr([-r.label_free_score for r in mine], [r.top1 for r in mine]).statistic
            lines += ["", f"Spearman rank correlation of (− loss) with top-1: **{rho:+.2f}** over {len(mine)} "
                      "experiments (+1: the loss orders them exactly as the labels do)."]
        else:
            lines += ["", f"Only {len(mine)} scored experiment(s): a rank correlation needs at least 3."]
        lines.append("")
    return lines


def plot(rows: list[Row], result: str, path: Path, reference: str = "pas") -> bool:
    """top-1 against size for `result`: a panel per dataset, a line per (init, method, mix, differing params); an
    init of another architecture than the reference is labelled CONFOUNDED."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen = [r for r in rows if r.result == result]
    if not chosen:
        return False
    datasets = panels(chosen)
    fig = Figure(figsize=(6 * len(datasets), 4.5))
    FigureCanvasAgg(fig)
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v"]
    methods = sorted({r.method for r in chosen})
    mixes = sorted({r.mix for r in chosen})
    for k, (experiment, dataset) in enumerate(datasets):
        ax = fig.add_subplot(1, len(datasets), k + 1)
        panel = [r for r in chosen if (r.experiment, r.dataset) == (experiment, dataset)]
        lines = sorted({(r.init, r.method, r.mix, r.params) for r in panel})
        for init, method, mix, params in lines:
            mine = [r for r in panel if (r.init, r.method, r.mix, r.params) == (init, method, mix, params)]
            points = sorted((r.size, r.top1) for r in mine)
            confounded = any(arch_check(r.comparison, reference, init) == CONFOUNDED for r in mine)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=markers[methods.index(method) % 5],
                    linestyle=styles[mixes.index(mix) % 4], label=" · ".join(filter(None, (
                        init, method, mix, params, "CONFOUNDED: different architecture" if confounded else ""))))
        ax.set_xscale("log")
        ax.set(xlabel="size (curated images)", ylabel="test top-1",
               title=f"{panel_title(chosen, experiment, dataset)}: {result}")
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
    write_csv(rows, out_dir / "compare.csv", reference)
    plotted = plot(rows, result, out_dir / "compare.png", reference)
    points = {r.run_id for r in rows}
    confounded = {r.run_id for r in rows if arch_check(r.comparison, reference, r.init) == CONFOUNDED}
    log.info("compared %d experiment point(s), %d rows -> %s", len(points), len(rows), out_dir)
    if confounded:
        log.warning("%d point(s) compare inits of different architectures: their gains are marked CONFOUNDED",
                    len(confounded))
    return {"points": len(points), "rows": len(rows), "plot": plotted, "confounded": len(confounded)}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: pas compare [--experiment pas-animals] [--out reports/compare] [--result linear]."""
    from pas.core.mlflow_store import read_tracking_uri
    from pas.core.runtime import setup_logging
    from pas.core.stage import command_parser

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
          + (", compare.png" if summary["plot"] else f" (no {args.result!r} result to plot)")
          + (f"; CONFOUNDED: {summary['confounded']} point(s) compare different architectures (marked in the table)"
             if summary["confounded"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
