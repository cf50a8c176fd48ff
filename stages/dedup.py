"""dedup: near-duplicates and evaluation-set copies out, then exactly `size` images; a decision per candidate."""
from pas.core.config import build, top_level
from pas.core.shards import write_table
from pas.core.stage import run_stage, stage_parser
from pas.curation.dedup import DedupConfig, dedup

KEYS = ("size", "seed", "mix", "dedup")


def body(args, params, run):
    cfg = build(DedupConfig, params.get("dedup"), "dedup")
    top = top_level(params)
    result = dedup(args.filtered, args.candidates, args.downstream, args.concepts, args.clip, top.size, cfg,
                   top.mix.real_share, top.seed)  # mix is the curated set's target too; seed: k-means balancing
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
