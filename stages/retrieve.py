"""retrieve: each concept's text embedding queries the pool index; the chosen images go into shards."""
import json
from pathlib import Path

from pas.core.config import build, top_level
from pas.core.runtime import pick_device
from pas.core.shards import atomic_dir, write_table
from pas.core.stage import run_stage, stage_parser
from pas.models.clip import ClipEncoder, concept_queries
from pas.sources.plan import candidate_counts
from pas.sources.pool_index import PoolIndexConfig, load_index
from pas.sources.retrieve import PoolFiles, RetrieveConfig, blend_exemplars, retrieve

KEYS = ("size", "oversample", "mix", "pool_index.source", "retrieve")


def body(args, params, run):
    cfg = build(RetrieveConfig, params.get("retrieve"), "retrieve")
    top = top_level(params)
    total = candidate_counts(top.size, top.oversample, top.mix)["retrieved"]
    pool_source = Path(build(PoolIndexConfig, params.get("pool_index"), "pool_index").source)
    concepts = json.loads(Path(args.concepts).read_text())["concepts"]
    encoder = ClipEncoder(args.clip, pick_device())
    files = PoolFiles.read(Path(args.pool_index))
    index = load_index(Path(args.pool_index))
    Path(args.downloads).mkdir(parents=True, exist_ok=True)  # an out even for a local pool
    with atomic_dir(args.out) as out:
        queries, exemplars = blend_exemplars(concept_queries(encoder, concepts), concepts, Path(cfg.exemplars), encoder,
                                             cfg.exemplar_weight)
        rows, metrics = retrieve(index, queries, concepts, files, pool_source, total, cfg, out,
                                 downloads=Path(args.downloads))
        write_table(rows, out / "manifest.parquet")
    return {**metrics, "exemplars": exemplars}


if __name__ == "__main__":
    parser = stage_parser("retrieve", __doc__)
    parser.add_argument("--concepts", required=True)
    parser.add_argument("--clip", required=True, help="resolved CLIP folder (models stage)")
    parser.add_argument("--pool-index", required=True, help="pool_index output folder")
    parser.add_argument("--out", required=True, help="folder for retrieved shards and manifest")
    parser.add_argument("--downloads", required=True,
                        help="a URL pool's downloaded hits (img2dataset shards; persists, so a killed run resumes)")
    run_stage("retrieve", KEYS, parser, body)
