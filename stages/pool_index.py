"""pool_index: embed the unlabeled pool with CLIP once (resumable chunks) and build a faiss index."""
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pas.clip import ClipEncoder
from pas.config import ConfigError, build
from pas.models import read_entry
from pas.pool import PoolIndexConfig, build_index, check_source, chunk_embeddings, embed_pool, save_index
from pas.runtime import num_workers, pick_device
from pas.shards import write_table
from pas.stage import run_stage, stage_parser

KEYS = ("seed", "pool_index")


def body(args, params, run):
    cfg = build(PoolIndexConfig, params.get("pool_index"), "pool_index")
    source = check_source(cfg.source)
    encoder = ClipEncoder(args.clip, pick_device(), cfg.batch_size)
    out = Path(args.out)
    chunks_dir = out / "chunks"
    count = embed_pool(source, encoder, cfg, chunks_dir, read_entry(args.clip)["sha256"], num_workers(),
                       args.worker, args.workers)
    if args.workers > 1:
        return {"chunks": count, "worker": args.worker, "workers": args.workers}
    items = pa.concat_tables([pq.read_table(chunks_dir / f"chunk-{i:06d}.parquet") for i in range(count)])
    usable = items.filter(items.column("usable"))
    if usable.num_rows == 0:
        raise ConfigError(f"pool_index.source={cfg.source!r} holds no usable images")
    write_table(usable.replace_schema_metadata(None), out / "files.parquet")  # row i = index id i
    dim = next(chunk_embeddings(chunks_dir, count)).shape[1]
    index, description = build_index(lambda: chunk_embeddings(chunks_dir, count), usable.num_rows, dim, cfg,
                                     int(params.get("seed", 0)))
    save_index(index, description, out)
    reasons = {}
    for reason in items.column("reason").to_pylist():
        reasons[reason] = reasons.get(reason, 0) + 1
    return {"items": items.num_rows, "indexed": usable.num_rows, "skipped": items.num_rows - usable.num_rows,
            "reasons": reasons, **description}


if __name__ == "__main__":
    parser = stage_parser("pool_index", __doc__)
    parser.add_argument("--clip", required=True, help="resolved CLIP folder (models stage)")
    parser.add_argument("--out", required=True, help="folder for chunks, the file table and the index (persists)")
    parser.add_argument("--worker", type=int, default=0, help="this worker's index (scale-out; default 0)")
    parser.add_argument("--workers", type=int, default=1,
                        help="workers sharing the chunks; with >1 only embed, then run once with 1 to index")
    run_stage("pool_index", KEYS, parser, body)
