"""dedup: near-duplicates out (within the set and against the eval sets), then exactly `size` images."""
import json
from pathlib import Path

import numpy as np

from pas.clip import ClipEncoder
from pas.config import build, parse_size
from pas.dedup import DedupConfig, balance, contaminated, duplicate_groups, keep_one_per_group
from pas.downstream import load_split
from pas.embed import pixel_hash
from pas.runtime import pick_device
from pas.shards import load_embeddings, read_table, write_table
from pas.stage import run_stage, stage_parser

KEYS = ("size", "dedup")


def body(args, params, run):
    cfg = build(DedupConfig, params.get("dedup"), "dedup")
    size = parse_size(params["size"])
    rows = read_table(args.filtered).to_pylist()
    embeddings = load_embeddings(Path(args.candidates) / "embeddings.npy")
    kept = [i for i, r in enumerate(rows) if r["kept"]]
    rows, embeddings = [rows[i] for i in kept], embeddings[kept]
    hashes = [r["pixel_hash"] for r in rows]

    encoder = ClipEncoder(args.clip, pick_device())
    eval_set = [im for split in sorted(Path(args.downstream).rglob("*.parquet")) for im in load_split(split)[0]]
    eval_embeddings = encoder.encode_images(eval_set, total=len(eval_set), desc="eval sets")
    dirty = contaminated(embeddings, hashes, eval_embeddings, {pixel_hash(im) for im in eval_set}, cfg.eval_threshold)

    groups = duplicate_groups(embeddings, hashes, cfg.threshold)
    unique = keep_one_per_group(groups, np.array([r["domain_score"] for r in rows]), [r["key"] for r in rows])
    survivors = [r for r, u, d in zip(rows, unique, dirty) if u and not d]
    concepts = [c["name"] for c in json.loads(Path(args.concepts).read_text())["concepts"]]
    curated = [survivors[i] for i in balance(survivors, size, concepts)]
    write_table(curated, args.out)
    per_concept = {c: sum(r["concept"] == c for r in curated) for c in concepts}
    return {"input": len(rows), "duplicate_groups": int(len(set(groups))), "duplicates_removed": int((~unique).sum()),
            "contaminated_removed": int(dirty.sum()), "survivors": len(survivors), "curated": len(curated),
            "per_concept": per_concept,
            "by_source": {s: sum(r["source"] == s for r in curated) for s in ("generated", "retrieved")}}


if __name__ == "__main__":
    parser = stage_parser("dedup", __doc__)
    parser.add_argument("--concepts", required=True)
    parser.add_argument("--clip", required=True, help="resolved CLIP folder (models stage)")
    parser.add_argument("--filtered", required=True, help="filter output manifest")
    parser.add_argument("--candidates", required=True, help="embed output folder (embeddings.npy)")
    parser.add_argument("--downstream", required=True, help="folder of downstream sets to decontaminate against")
    parser.add_argument("--out", required=True, help="curated manifest (parquet) to write")
    run_stage("dedup", KEYS, parser, body)
