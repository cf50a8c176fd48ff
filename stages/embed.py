"""embed: CLIP embeddings and image statistics of every candidate (generated + retrieved), once."""
from collections import Counter
from pathlib import Path

from pas.core.shards import atomic_dir, read_table, save_embeddings, write_table
from pas.core.stage import run_stage, stage_parser
from pas.curation.embed import candidate_rows, embed_all
from pas.models.registry import read_entry
from pas.sources.pool_index import pool_embeddings

KEYS = ()


def body(args, params, run):
    sources = [(read_table(Path(folder) / "manifest.parquet"), Path(folder)) for folder in args.sources]
    rows = candidate_rows(sources)
    reuse = [i for i, row in enumerate(rows) if row["source"] == "retrieved" and row.get("pool_row") is not None]
    vectors = pool_embeddings(Path(args.pool_index), [rows[i]["pool_row"] for i in reuse],
                              read_entry(args.clip)["sha256"]) if reuse else None
    known = dict(zip(reuse, vectors)) if vectors is not None else {}
    embeddings, stats = embed_all(rows, args.clip, known)
    rows = [{**row, **stat} for row, stat in zip(rows, stats)]
    with atomic_dir(args.out) as out:
        save_embeddings(embeddings, out / "embeddings.npy")
        write_table(rows, out / "manifest.parquet")
    return {"candidates": len(rows), "by_source": dict(Counter(row["source"] for row in rows)),
            "undecodable": sum(not r["decodable"] for r in rows), "reused_pool_embeddings": len(known)}


if __name__ == "__main__":
    parser = stage_parser("embed", __doc__)
    parser.add_argument("--clip", required=True, help="resolved CLIP folder (models stage)")
    parser.add_argument("--sources", nargs="+", required=True, help="stage folders holding manifest.parquet + shards")
    parser.add_argument("--pool-index", required=True,
                        help="pool_index output: retrieved images reuse its vectors when the CLIP model is the same")
    parser.add_argument("--out", required=True, help="folder for the candidate manifest and embeddings")
    run_stage("embed", KEYS, parser, body)
