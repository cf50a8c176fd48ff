"""finetune: linear, kNN, few-shot, full fine-tune (and ELFIS) for each downstream dataset and init."""
import json
from pathlib import Path

from pas.core.config import top_level
from pas.core.recipes import with_recipe
from pas.core.atomic import atomic_dir
from pas.core.stage import run_stage, stage_parser
from pas.transfer.finetune import (
    finetune_config,
    pretrain_dataset,
    read_finetune_index,
    run_finetune,
    select_datasets,
)

KEYS = ("seed", "finetune")
CURVE_POINTS = 10  # learning-curve points per result sent to MLflow (the full curves are in index.json)


def log_curves(run, index_datasets):
    """Per-epoch loss and train top-1 of every trained result, as MLflow metric histories."""
    for dataset, entry in index_datasets.items():
        for init, record in entry.get("inits", {}).items():  # a skipped dataset has none
            for name, result in record["results"].items():
                history = result["history"]
                for point in history[:: max(1, len(history) // CURVE_POINTS)] + history[-1:]:
                    run.log_metrics({f"curve.{dataset}.{init}.{name}": {"loss": point["loss"],
                                                                        "train_top1": point["train_top1"]}},
                                    step=point["epoch"])


def pretrained_backbone(folder):
    """The architecture the pretrain stage trained (its model card), which `arch: pretrain` inits use."""
    card = folder / "model_card.json"
    if not card.is_file():
        raise FileNotFoundError(f"{card} not found; run the pretrain stage first (dvc repro pretrain)")
    return json.loads(card.read_text())["backbone"]


def body(args, params, run):
    cfg = finetune_config(with_recipe(params, "finetune"))
    seed = top_level(params).seed
    datasets = select_datasets(args.downstream, cfg, seed)
    backbone = pretrained_backbone(Path(args.pretrained))
    with atomic_dir(args.out) as out:
        metrics = run_finetune(datasets, backbone, args.pretrained, cfg, out, seed, args.baselines)
    index = read_finetune_index(args.out)
    if dataset := pretrain_dataset(index):
        run.log_input_dataset(dataset)
    log_curves(run, index["datasets"])
    return metrics


if __name__ == "__main__":
    parser = stage_parser("finetune", __doc__)
    parser.add_argument("--pretrained", required=True, help="pretrain output folder (backbone.safetensors)")
    parser.add_argument("--downstream", required=True, help="folder of downstream datasets (parquet, ImageFolder, CSV)")
    parser.add_argument("--baselines", required=True,
                        help="the models stage's folder of timm ImageNet baselines (inits with weights: timm)")
    parser.add_argument("--out", required=True, help="folder for cached features, test scores and index.json")
    run_stage("finetune", KEYS, parser, body)
