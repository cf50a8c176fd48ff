"""finetune: linear probes on frozen features of the PaS-pretrained and a random-init backbone."""
from pathlib import Path

from pas.config import DataError, build
from pas.finetune import FinetuneConfig, run_finetune
from pas.shards import atomic_dir
from pas.stage import run_stage, stage_parser

KEYS = ("seed", "pretrain.backbone", "finetune")


def body(args, params, run):
    cfg = build(FinetuneConfig, params.get("finetune"), "finetune")
    datasets = {p.parent.name: p.parent for p in sorted(Path(args.downstream).glob("*/train.parquet"))}
    if not datasets:
        raise DataError(f"{args.downstream} holds no <dataset>/train.parquet; run sample_data or add a dataset")
    inits = {"pas": Path(args.pretrained), "random": None}
    with atomic_dir(args.out) as out:
        return run_finetune(datasets, params["pretrain"]["backbone"], inits, cfg, out, int(params.get("seed", 0)))


if __name__ == "__main__":
    parser = stage_parser("finetune", __doc__)
    parser.add_argument("--pretrained", required=True, help="pretrain output folder (backbone.safetensors)")
    parser.add_argument("--downstream", required=True, help="folder of <dataset>/{train,test}.parquet")
    parser.add_argument("--out", required=True, help="folder for cached features, probes and test logits")
    run_stage("finetune", KEYS, parser, body)
