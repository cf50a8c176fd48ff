"""dedup: near-duplicates and evaluation-set copies out, then exactly `size` images; a decision per candidate."""
import json
from pathlib import Path

from pas.clip import ClipEncoder
from pas.config import build, parse_size
from pas.curate import curate
from pas.decontam import Thresholds, decontaminate, eval_splits
from pas.dedup import DedupConfig
from pas.fingerprint import read_fingerprints
from pas.runtime import pick_device
from pas.shards import load_embeddings, read_table, write_table
from pas.stage import run_stage, stage_parser

KEYS = ("size", "dedup")


def body(args, params, run):
    cfg = build(DedupConfig, params.get("dedup"), "dedup")
    size = parse_size(params["size"])
    rows = read_table(args.filtered).to_pylist()
    kept = [i for i, r in enumerate(rows) if r["kept"]]
    rows, embeddings = [rows[i] for i in kept], load_embeddings(Path(args.candidates) / "embeddings.npy")[kept]
    content, thumbs = read_fingerprints(rows)
    encoder = ClipEncoder(args.clip, pick_device())
    dirty = decontaminate(embeddings, [r["pixel_hash"] for r in rows], thumbs, eval_splits(args.downstream),
                          encoder, Thresholds(cfg.eval_threshold, cfg.copy_threshold, cfg.copy_max_crop), cfg.search())
    concepts = [c["name"] for c in json.loads(Path(args.concepts).read_text())["concepts"]]
    result = curate(rows, embeddings, content, dirty, size, concepts, cfg)
    write_table(result.decisions, args.decisions)
    write_table(result.curated, args.out)
    return result.metrics


if __name__ == "__main__":
    parser = stage_parser("dedup", __doc__)
    parser.add_argument("--concepts", required=True)
    parser.add_argument("--clip", required=True, help="resolved CLIP folder (models stage)")
    parser.add_argument("--filtered", required=True, help="filter output manifest")
    parser.add_argument("--candidates", required=True, help="embed output folder (embeddings.npy)")
    parser.add_argument("--downstream", required=True, help="folder of downstream sets to decontaminate against")
    parser.add_argument("--out", required=True, help="curated manifest (parquet) to write")
    parser.add_argument("--decisions", required=True, help="one row per filtered candidate: status and why (parquet)")
    run_stage("dedup", KEYS, parser, body)
