"""pretrain: self-supervised pretraining of a timm backbone on the curated images (Lightning)."""
from pathlib import Path

from pas.core.config import build, top_level
from pas.core.shards import atomic_dir, read_table
from pas.core.stage import run_stage, stage_parser
from pas.core.tracking import dataset_record
from pas.ssl.pretrain import PretrainConfig, pretrain

KEYS = ("seed", "pretrain")


def body(args, params, run):
    cfg = build(PretrainConfig, params.get("pretrain"), "pretrain")
    manifest = read_table(args.curated)  # shard paths in it are relative to the repository root
    knn_val = Path(args.knn_val) if args.knn_val else None
    dataset = dataset_record("curated", args.curated)
    run.log_input_dataset(dataset)
    with atomic_dir(args.out) as out:
        return pretrain(manifest, Path("."), cfg, out, top_level(params).seed, loggers=run.lightning_loggers(),
                        knn_val=knn_val, checkpoint_dir=Path(args.checkpoints), checkpoint_every=args.checkpoint_every,
                        source=dataset)


if __name__ == "__main__":
    parser = stage_parser("pretrain", __doc__)
    parser.add_argument("--curated", required=True, help="curated manifest (dedup output)")
    parser.add_argument("--out", required=True, help="folder for backbone.safetensors + model_card.json")
    parser.add_argument("--knn-val", help="labeled parquet (image, label, label_name) for the per-epoch kNN monitor")
    parser.add_argument("--checkpoints", default="checkpoints/pretrain",
                        help="resumable checkpoints, outside DVC outputs so they survive reruns (self-gitignored)")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="optimizer steps between checkpoints")
    run_stage("pretrain", KEYS, parser, body)
