"""filter: domain score, concept score, quality rules and (filter.exemplars) the exemplar-cluster rule; every
rejection gets a reason."""
from pas.core.config import build
from pas.core.shards import write_table
from pas.core.stage import run_stage, stage_parser
from pas.curation.filter import FilterConfig, filter_candidates

KEYS = ("filter",)


def honesty_tags(metrics):
    """What the MLflow runs table must say when the exemplar rule ran: whether it curated toward downstream images."""
    if "oracle_exemplars" not in metrics:
        return {}
    found = metrics["exemplars"]
    if metrics["oracle_exemplars"]:
        where = ", ".join(f"{name}: {count}" for name, count in found["by_split"].items())
        return {"pas.exemplars": f"ORACLE EXEMPLARS: {found['downstream_copies']} of {found['images']} exemplar "
                                 f"images are downstream images ({where})"}
    if not found["checked_splits"]:
        return {"pas.exemplars": f"{found['images']} exemplar images, not checked (no downstream dataset)"}
    return {"pas.exemplars": f"{found['images']} exemplar images, none a copy of a downstream image"}


def body(args, params, run):
    cfg = build(FilterConfig, params.get("filter"), "filter")
    rows, metrics = filter_candidates(args.candidates, args.concepts, args.clip, cfg, args.exemplars, args.downstream)
    write_table(rows, args.out)
    run.set_tags(honesty_tags(metrics))
    return metrics


if __name__ == "__main__":
    parser = stage_parser("filter", __doc__)
    parser.add_argument("--concepts", required=True)
    parser.add_argument("--clip", required=True, help="resolved CLIP folder (models stage)")
    parser.add_argument("--candidates", required=True, help="embed output folder")
    parser.add_argument("--exemplars", required=True, help="exemplar images (retrieve.exemplars): filter.exemplars")
    parser.add_argument("--downstream", required=True, help="downstream datasets: exemplars copied from them are named")
    parser.add_argument("--out", required=True, help="filtered manifest (parquet) to write")
    run_stage("filter", KEYS, parser, body)
