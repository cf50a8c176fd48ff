"""concepts: domain spec (+ LLM discovery) -> data/concepts.json; LLM answers cached in --llm-cache."""
import json
import tempfile
from pathlib import Path

from pas.concepts.build import ConceptsConfig, build_concepts, concept_metrics
from pas.core.config import build, top_level
from pas.core.atomic import write_json
from pas.core.stage import run_stage, stage_parser

KEYS = ("domain", "seed", "concepts")


def body(args, params, run):
    cfg = build(ConceptsConfig, params.get("concepts"), "concepts")
    top = top_level(params)
    document, report = build_concepts(top.domain, cfg, top.seed, args.llm_cache)
    write_json(document, args.out)
    Path(args.llm_cache).mkdir(parents=True, exist_ok=True)  # an out even when no LLM is asked
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "concepts_report.json"
        path.write_text(json.dumps(report, indent=2, sort_keys=True))
        run.log_artifact(path)
    return concept_metrics(document, report)


if __name__ == "__main__":
    parser = stage_parser("concepts", __doc__)
    parser.add_argument("--out", required=True, help="concepts.json to write")
    parser.add_argument("--llm-cache", required=True, help="folder of cached LLM answers (DVC out, persist: true)")
    run_stage("concepts", KEYS, parser, body)
