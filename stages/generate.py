"""generate: render every planned (concept, prompt, seed) with the diffusion model into shards."""
import json
from pathlib import Path

from pas.core.config import build, top_level
from pas.core.stage import run_stage, stage_parser
from pas.models.registry import read_entry
from pas.sources.generate import (
    GenerateConfig,
    generate,
    makeup_jobs,
    plan_jobs,
    retrieval_shortfall,
)
from pas.sources.plan import candidate_counts

KEYS = ("size", "seed", "oversample", "mix", "generate")


def body(args, params, run):
    cfg = build(GenerateConfig, params.get("generate"), "generate")
    top = top_level(params)
    count = candidate_counts(top.size, top.oversample, top.mix)["generated"]
    concepts = json.loads(Path(args.concepts).read_text())["concepts"]
    missing = retrieval_shortfall(args.shortfall) if args.shortfall else {}  # retrieve.shortfall: generate
    jobs = plan_jobs(concepts, count, top.seed) + makeup_jobs(concepts, missing, count, top.seed)
    metrics = generate(args.generator, read_entry(args.generator), jobs, cfg, Path(args.out))
    return {**metrics, "makeup_images": sum(missing.values())}


if __name__ == "__main__":
    parser = stage_parser("generate", __doc__)
    parser.add_argument("--concepts", required=True)
    parser.add_argument("--generator", required=True, help="resolved generator folder (models stage)")
    parser.add_argument("--out", required=True, help="shard folder (kept between runs for resume)")
    parser.add_argument("--shortfall", default=None,
                        help="retrieve's shortfall.json: with retrieve.shortfall generate, generation makes it up")
    run_stage("generate", KEYS, parser, body)
