"""report: the dataset report (HTML with embedded PNGs, and the PNGs as DVC plots) for the curated set."""
import json
from pathlib import Path

from pas.core.config import build
from pas.core.provenance import DATASET_PARAMS, collect_provenance
from pas.core.shards import load_embeddings, read_table
from pas.core.stage import run_stage, stage_parser
from pas.curation.dedup import DedupConfig
from pas.curation.report import Inputs, ReportConfig, build_report

THRESHOLDS = ("filter.threshold", "filter.concept_threshold", "dedup.threshold", "dedup.eval_threshold",
              "dedup.copy_threshold")
KEYS = ("report", *DATASET_PARAMS)  # the report's provenance digests every param that shaped the dataset


def body(args, params, run):
    cfg = build(ReportConfig, params.get("report"), "report")
    thresholds = {}
    for key in THRESHOLDS:
        head, _, leaf = key.partition(".")
        if leaf in params.get(head, {}):
            thresholds[key] = float(params[head][leaf])
    shortfall = Path(args.retrieved) / "shortfall.json"
    missing = json.loads(shortfall.read_text())["missing"] if shortfall.is_file() else {}
    inputs = Inputs(read_table(args.filtered).to_pylist(), read_table(args.decisions).to_pylist(),
                    read_table(args.curated).to_pylist(), load_embeddings(Path(args.candidates) / "embeddings.npy"),
                    thresholds, Path(args.downstream), missing,
                    build(DedupConfig, params.get("dedup"), "dedup").balance)
    provenance = collect_provenance(".", {k: v for k, v in params.items() if k in DATASET_PARAMS}, args.lock,
                                    run_facts=False)
    metrics = build_report(inputs, cfg, args.out, args.figures, provenance)
    run.log_artifact(args.out)
    run.log_figures(args.figures)
    return metrics


if __name__ == "__main__":
    parser = stage_parser("report", __doc__)
    parser.add_argument("--filtered", required=True, help="filter output manifest (every candidate)")
    parser.add_argument("--candidates", required=True, help="embed output folder (embeddings.npy)")
    parser.add_argument("--decisions", required=True, help="dedup decisions (one row per filter-kept candidate)")
    parser.add_argument("--curated", required=True, help="curated manifest")
    parser.add_argument("--retrieved", required=True, help="retrieve output (shortfall.json: what the pool lacked)")
    parser.add_argument("--downstream", required=True, help="evaluation sets (to show what removed images matched)")
    parser.add_argument("--lock", default="models/lock.json", help="models lock (pinned models, for provenance)")
    parser.add_argument("--out", required=True, help="HTML report to write")
    parser.add_argument("--figures", required=True, help="folder for the PNG figures (DVC plots)")
    run_stage("report", KEYS, parser, body)
