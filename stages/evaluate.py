"""evaluate: top-1/top-5/per-class per dataset, init and protocol -> metrics/eval.json, report and plots."""
from pathlib import Path

from pas.config import build
from pas.eval_report import render_report
from pas.evaluate import EvaluateConfig, evaluate, load_index, pretrain_dataset
from pas.shards import atomic_dir, atomic_path
from pas.stage import run_stage, stage_parser

# size, mix and pretrain.* are read only to label the results: MLflow then holds each result with the
# experiment coordinates that `python -m pas.compare` plots against
KEYS = ("size", "mix", "pretrain.method", "pretrain.backbone", "evaluate")


def body(args, params, run):
    cfg = build(EvaluateConfig, params.get("evaluate"), "evaluate")
    with atomic_dir(args.plots) as plots:
        metrics = evaluate(args.finetune, cfg, plots)
    pretrain = params.get("pretrain", {})
    coordinates = {"size": params.get("size"), "mix": params.get("mix"), "pretrain.method": pretrain.get("method"),
                   "pretrain.backbone": pretrain.get("backbone")}
    index = load_index(args.finetune)
    if dataset := pretrain_dataset(index):
        run.log_input_dataset(dataset)
    with atomic_path(args.report) as tmp:
        tmp.write_text(render_report(metrics, index, cfg.reference, coordinates))
    for path in [*sorted(Path(args.plots).glob("*.png")), Path(args.report)]:
        run.log_artifact(path)
    return metrics


if __name__ == "__main__":
    parser = stage_parser("evaluate", __doc__)
    parser.add_argument("--finetune", required=True, help="finetune output folder")
    parser.add_argument("--plots", required=True, help="folder for confusion, learning-curve and summary PNGs")
    parser.add_argument("--report", required=True, help="markdown report to write")
    run_stage("evaluate", KEYS, parser, body, metrics_name="eval")
