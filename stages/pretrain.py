"""pretrain: self-supervised pretraining of a timm backbone on the curated images (Lightning)."""
from pathlib import Path

from pas.core.config import build, top_level
from pas.core.recipes import with_recipe
from pas.core.atomic import atomic_dir
from pas.core.stage import run_stage, stage_parser
from pas.ssl.datasets import resolve_dataset
from pas.ssl.pretrain import PretrainConfig, pretrain

KEYS = ("seed", "pretrain")
TIMM_FOLDER = ("config.json", "model.safetensors", "README.md", "model_card.json")


def body(args, params, run):
    cfg = build(PretrainConfig, with_recipe(params, "pretrain"), "pretrain")
    # curated: shard paths relative to the repository root; another dataset's shards are absolute
    manifest, dataset = resolve_dataset(cfg.dataset, Path(args.curated))
    knn_val = Path(args.knn_val) if args.knn_val else None
    run.log_input_dataset(dataset)
    with atomic_dir(args.out) as out:
        metrics = pretrain(manifest, Path("."), cfg, out, top_level(params).seed, loggers=run.lightning_loggers(),
                           knn_val=knn_val, checkpoint_dir=Path(args.checkpoints),
                           checkpoint_every=args.checkpoint_every, source=dataset)
    # the timm folder as the run's model artifact: MLflow's "backbone/" loads with timm.create_model("local-dir:...")
    run.log_folder(args.out, "backbone", TIMM_FOLDER)
    return metrics


if __name__ == "__main__":
    parser = stage_parser("pretrain", __doc__)
    parser.add_argument("--curated", required=True, help="curated manifest (dedup output)")
    parser.add_argument("--out", required=True, help="folder for backbone.safetensors + model_card.json")
    parser.add_argument("--knn-val", help="labeled parquet (image, label, label_name) for the per-epoch kNN monitor")
    parser.add_argument("--checkpoints", default="checkpoints/pretrain",
                        help="resumable checkpoints, outside DVC outputs so they survive reruns (self-gitignored)")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="optimizer steps between checkpoints")
    run_stage("pretrain", KEYS, parser, body)
