"""evaluate: linear-probe and kNN accuracy per dataset and init -> metrics/eval.json + confusion plots."""
from pathlib import Path

from pas.config import build
from pas.evaluate import EvaluateConfig, evaluate
from pas.shards import atomic_dir
from pas.stage import run_stage, stage_parser

KEYS = ("evaluate",)


def body(args, params, run):
    cfg = build(EvaluateConfig, params.get("evaluate"), "evaluate")
    with atomic_dir(args.plots) as plots:
        metrics = evaluate(args.finetune, cfg, plots)
    for png in sorted(Path(args.plots).glob("*.png")):
        run.log_artifact(png)
    return metrics


if __name__ == "__main__":
    parser = stage_parser("evaluate", __doc__)
    parser.add_argument("--finetune", required=True, help="finetune output folder")
    parser.add_argument("--plots", required=True, help="folder for confusion-matrix PNGs")
    run_stage("evaluate", KEYS, parser, body, metrics_name="eval")
