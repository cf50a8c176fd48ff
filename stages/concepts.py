"""concepts: domain spec -> data/concepts.json (concepts and diversified prompts)."""
from pas.concepts import ConceptsConfig, build_concepts
from pas.config import build
from pas.shards import write_json
from pas.stage import run_stage, stage_parser

KEYS = ("domain", "seed", "concepts")


def body(args, params, run):
    cfg = build(ConceptsConfig, params.get("concepts"), "concepts")
    document = build_concepts(str(params["domain"]), cfg, int(params.get("seed", 0)))
    write_json(document, args.out)
    return {"concepts": len(document["concepts"]),
            "prompts": sum(len(c["prompts"]) for c in document["concepts"])}


if __name__ == "__main__":
    parser = stage_parser("concepts", __doc__)
    parser.add_argument("--out", required=True, help="concepts.json to write")
    run_stage("concepts", KEYS, parser, body)
