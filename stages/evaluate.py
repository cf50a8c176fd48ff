"""evaluate: top-1/top-5/per-class per dataset, init and protocol -> metrics/eval.json, report and plots."""
import json
from pathlib import Path

from pas.core.config import build
from pas.core.provenance import collect_provenance, provenance_markdown
from pas.core.atomic import atomic_dir, atomic_path
from pas.core.stage import run_stage, stage_parser
from pas.evaluate.eval_md import render_eval_md
from pas.evaluate.metrics import EvaluateConfig, evaluate
from pas.transfer.index import pretrain_dataset, read_finetune_index

# size and mix are read only to label the results (pretrain's method, backbone, budget and images seen come from
# its model card): MLflow then holds each result with the experiment coordinates that `pas compare` plots against
KEYS = ("size", "domain", "mix", "evaluate")
CARD_COORDINATES = ("method", "backbone", "budget", "images_seen", "dataset")


def pretrain_coordinates(folder):
    """pretrain.method / backbone / budget / images_seen / dataset as the pretrain stage ran them (its model card)."""
    card = json.loads((folder / "model_card.json").read_text())
    values = {"method": card["method"], "backbone": card["backbone"],
              "budget": card.get("derived", {}).get("budget") or "epochs",
              "images_seen": card.get("metrics", {}).get("images_seen"),
              "dataset": (card.get("dataset") or {}).get("name")}
    return {f"pretrain.{key}": values[key] for key in CARD_COORDINATES}


def honesty_tags(summary):
    """What the MLflow runs table must say about this comparison: oracle concepts, confounded architectures."""
    concepts = "oracle concepts (the shipped bank names downstream classes)" if summary.get("oracle_concepts") \
        else "no downstream class named by the shipped bank" if "oracle_concepts" in summary else "not checked"
    mixed = summary.get("mixed_architecture")
    comparison = ("CONFOUNDED: different architectures (" + ", ".join(mixed) + ")") if mixed else "same architecture"
    return {"pas.concepts": concepts, "pas.comparison": comparison}


def body(args, params, run):
    cfg = build(EvaluateConfig, params.get("evaluate"), "evaluate")
    card = pretrain_coordinates(Path(args.pretrained))
    # the concepts describe the curated set only: a backbone pretrained on another dataset gets no concept check
    curated = card["pretrain.dataset"] in (None, "curated")
    concepts = json.loads(Path(args.concepts).read_text())["concepts"] if args.concepts and curated else None
    with atomic_dir(args.plots) as plots:
        metrics = evaluate(args.finetune, cfg, plots, concepts)
    run.log_params(card)
    run.set_tags(honesty_tags(metrics["summary"]))
    coordinates = {"domain": params.get("domain"), "size": params.get("size"), "mix": params.get("mix"), **card}
    index = read_finetune_index(args.finetune)
    if dataset := pretrain_dataset(index):
        run.log_input_dataset(dataset)
    with atomic_path(args.report) as tmp:
        title, report = render_eval_md(metrics, index, cfg.reference, coordinates).split("\n", 1)
        provenance = provenance_markdown(collect_provenance(".", params, args.lock, run_facts=False))
        tmp.write_text(f"{title}\n\n{provenance}{report}")
    run.log_figures(args.plots)
    run.log_artifact(args.report)
    return metrics


if __name__ == "__main__":
    parser = stage_parser("evaluate", __doc__)
    parser.add_argument("--finetune", required=True, help="finetune output folder")
    parser.add_argument("--plots", required=True, help="folder for confusion, learning-curve and summary PNGs")
    parser.add_argument("--report", required=True, help="markdown report to write")
    parser.add_argument("--pretrained", required=True, help="pretrain output folder (its model card names the run)")
    parser.add_argument("--lock", default="models/lock.json", help="models/lock.json: the pinned models named up top")
    parser.add_argument("--concepts", help="concepts.json: its names are compared with each dataset's classes")
    run_stage("evaluate", KEYS, parser, body, metrics_name="eval")
