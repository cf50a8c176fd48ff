"""embed: CLIP embeddings and image statistics of every candidate (generated + retrieved), once."""
from pathlib import Path

from pas.core.runtime import pick_device
from pas.core.shards import atomic_dir, read_table, save_embeddings, write_table
from pas.core.stage import run_stage, stage_parser
from pas.curation.embed import candidate_rows, stream_images
from pas.models.clip import ClipEncoder

KEYS = ()


def body(args, params, run):
    sources = [(read_table(Path(folder) / "manifest.parquet"), Path(folder)) for folder in args.sources]
    rows = candidate_rows(sources)
    encoder = ClipEncoder(args.clip, pick_device())
    stats = []
    embeddings = encoder.encode_images(stream_images(rows, stats), total=len(rows), desc="embed")
    rows = [{**row, **stat} for row, stat in zip(rows, stats)]
    with atomic_dir(args.out) as out:
        save_embeddings(embeddings, out / "embeddings.npy")
        write_table(rows, out / "manifest.parquet")
    by_source = {}
    for row in rows:
        by_source[row["source"]] = by_source.get(row["source"], 0) + 1
    return {"candidates": len(rows), "by_source": by_source, "undecodable": sum(not r["decodable"] for r in rows)}


if __name__ == "__main__":
    parser = stage_parser("embed", __doc__)
    parser.add_argument("--clip", required=True, help="resolved CLIP folder (models stage)")
    parser.add_argument("--sources", nargs="+", required=True, help="stage folders holding manifest.parquet + shards")
    parser.add_argument("--out", required=True, help="folder for the candidate manifest and embeddings")
    run_stage("embed", KEYS, parser, body)
