"""filter: domain score, concept score and quality rules; every rejection gets a reason."""
from pas.core.config import build
from pas.core.shards import write_table
from pas.core.stage import run_stage, stage_parser
from pas.curation.filter import FilterConfig, filter_candidates

KEYS = ("filter",)


def body(args, params, run):
    cfg = build(FilterConfig, params.get("filter"), "filter")
    rows, metrics = filter_candidates(args.candidates, args.concepts, args.clip, cfg)
    write_table(rows, args.out)
    return metrics


if __name__ == "__main__":
    parser = stage_parser("filter", __doc__)
    parser.add_argument("--concepts", required=True)
    parser.add_argument("--clip", required=True, help="resolved CLIP folder (models stage)")
    parser.add_argument("--candidates", required=True, help="embed output folder")
    parser.add_argument("--out", required=True, help="filtered manifest (parquet) to write")
    run_stage("filter", KEYS, parser, body)
