"""evaluate: top-1/top-5/per-class per dataset, init and protocol -> metrics/eval.json, report and plots."""

from pas.core.config import build
from pas.core.shards import atomic_dir, atomic_path
from pas.core.stage import run_stage, stage_parser
from pas.evaluate.eval_md import render_eval_md
from pas.evaluate.metrics import EvaluateConfig, evaluate
from pas.transfer.index import pretrain_dataset, read_finetune_index

# size, mix and pretrain.* are read only to label the results: MLflow then holds each result with the
# experiment coordinates that `python -m pas.evaluate.compare` plots against
KEYS = ("size", "mix", "pretrain.method", "pretrain.backbone", "evaluate")


def body(args, params, run):
    cfg = build(EvaluateConfig, params.get("evaluate"), "evaluate")
    with atomic_dir(args.plots) as plots:
        metrics = evaluate(args.finetune, cfg, plots)
    pretrain = params.get("pretrain", {})
    coordinates = {"size": params.get("size"), "mix": params.get("mix"), "pretrain.method": pretrain.get("method"),
                   "pretrain.backbone": pretrain.get("backbone")}
    index = read_finetune_index(args.finetune)
    if dataset := pretrain_dataset(index):
        run.log_input_dataset(dataset)
    with atomic_path(args.report) as tmp:
        tmp.write_text(render_eval_md(metrics, index, cfg.reference, coordinates))
    run.log_figures(args.plots)
    run.log_artifact(args.report)
    return metrics


if __name__ == "__main__":
    parser = stage_parser("evaluate", __doc__)
    parser.add_argument("--finetune", required=True, help="finetune output folder")
    parser.add_argument("--plots", required=True, help="folder for confusion, learning-curve and summary PNGs")
    parser.add_argument("--report", required=True, help="markdown report to write")
    run_stage("evaluate", KEYS, parser, body, metrics_name="eval")
