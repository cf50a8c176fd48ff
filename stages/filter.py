"""filter: domain score, concept score and quality rules; every rejection gets a reason."""
import json
from pathlib import Path

import numpy as np

from pas.clip import ClipEncoder
from pas.config import build
from pas.filter import FilterConfig, concept_scores, domain_scores, reasons
from pas.retrieve import concept_queries
from pas.runtime import pick_device
from pas.shards import load_embeddings, read_table, write_table
from pas.stage import run_stage, stage_parser

KEYS = ("filter",)


def body(args, params, run):
    cfg = build(FilterConfig, params.get("filter"), "filter")
    document = json.loads(Path(args.concepts).read_text())
    rows = read_table(Path(args.candidates) / "manifest.parquet").to_pylist()
    images = load_embeddings(Path(args.candidates) / "embeddings.npy")
    encoder = ClipEncoder(args.clip, pick_device())
    domain = domain_scores(images, encoder.encode_texts(document["positive_prompts"]),
                           encoder.encode_texts(document["negative_prompts"]), cfg.logit_scale)
    names = [c["name"] for c in document["concepts"]]
    own = np.array([names.index(r["concept"]) for r in rows], dtype=np.int64)
    concept = concept_scores(images, own, concept_queries(encoder, document["concepts"]), cfg.logit_scale)
    why = reasons(rows, domain, concept, cfg)
    out = [{**r, "domain_score": float(d), "concept_score": float(c), "kept": not w, "reason": w}
           for r, d, c, w in zip(rows, domain, concept, why)]
    write_table(out, args.out)
    rejected = {}
    for w in why:
        if w:
            rejected[w] = rejected.get(w, 0) + 1
    return {"candidates": len(out), "kept": sum(r["kept"] for r in out), "rejected": rejected,
            "domain_score_mean": float(domain.mean()) if len(domain) else 0.0}


if __name__ == "__main__":
    parser = stage_parser("filter", __doc__)
    parser.add_argument("--concepts", required=True)
    parser.add_argument("--clip", required=True, help="resolved CLIP folder (models stage)")
    parser.add_argument("--candidates", required=True, help="embed output folder")
    parser.add_argument("--out", required=True, help="filtered manifest (parquet) to write")
    run_stage("filter", KEYS, parser, body)
