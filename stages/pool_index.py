"""pool_index: embed the unlabeled pool with CLIP once and build a faiss index over it."""
from pathlib import Path

from pas.clip import ClipEncoder
from pas.config import ConfigError, build
from pas.pool import PoolIndexConfig, build_index, check_source, recall_at_k, save_index, scan_pool
from pas.runtime import pick_device
from pas.shards import atomic_dir, save_embeddings, write_table
from pas.stage import run_stage, stage_parser

KEYS = ("seed", "pool_index")


def body(args, params, run):
    cfg = build(PoolIndexConfig, params.get("pool_index"), "pool_index")
    folder = check_source(cfg.source)
    encoder = ClipEncoder(args.clip, pick_device(), cfg.batch_size)
    rows = []
    embeddings = encoder.encode_images(scan_pool(folder, cfg.min_side, rows), desc="pool_index")
    usable = [r for r in rows if r["usable"]]
    if not usable:
        raise ConfigError(f"pool_index.source={cfg.source!r} holds no usable images")
    index, kind = build_index(embeddings, cfg.index, int(params.get("seed", 0)))
    with atomic_dir(args.out) as out:
        save_embeddings(embeddings, out / "embeddings.npy")
        write_table(rows, out / "files.parquet")
        save_index(index, out / "index.faiss")
    reasons = {}
    for r in rows:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    return {"files": len(rows), "indexed": len(usable), "skipped": len(rows) - len(usable), "reasons": reasons,
            "index": kind, "recall_at_10": recall_at_k(index, embeddings, 10)}


if __name__ == "__main__":
    parser = stage_parser("pool_index", __doc__)
    parser.add_argument("--clip", required=True, help="resolved CLIP folder (models stage)")
    parser.add_argument("--out", required=True, help="folder for embeddings, file table and index")
    run_stage("pool_index", KEYS, parser, body)
