"""pool_index: embed the unlabeled pool with CLIP once (resumable chunks) and build a faiss index."""
from pathlib import Path

from pas.core.config import build, top_level
from pas.core.stage import run_stage, stage_parser
from pas.sources.pool_index import PoolIndexConfig, index_pool

KEYS = ("seed", "pool_index")


def body(args, params, run):
    cfg = build(PoolIndexConfig, params.get("pool_index"), "pool_index")
    return index_pool(cfg, args.clip, Path(args.out), top_level(params).seed)


if __name__ == "__main__":
    parser = stage_parser("pool_index", __doc__)
    parser.add_argument("--clip", required=True, help="resolved CLIP folder (models stage)")
    parser.add_argument("--out", required=True, help="folder for chunks, the file table and the index (persists)")
    run_stage("pool_index", KEYS, parser, body)
