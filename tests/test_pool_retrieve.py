import io
import json

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pas.core.config import ConfigError, DataError
from pas.core.shards import encode_jpeg, read_shard, write_shard
from pas.curation.embed import embed_candidates
from pas.models.clip import ClipEncoder, concept_queries
from pas.models.registry import read_entry
from pas.sources.pool_index import (
    PoolIndexConfig,
    build_index,
    check_source,
    choose_index,
    chunk_embeddings,
    embed_pool,
    index_pool,
    load_index,
    pool_embeddings,
    pq_bytes,
    recall,
    save_index,
)
from pas.sources.pool_sources import iter_pool, load_items
from pas.sources.retrieve import RetrieveConfig, assign, retrieve, select


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_mixed_pool(root, image_factory, n=8):
    """Folder + tar shard + parquet + file list, with every kind of bad input."""
    (root / "photos").mkdir(parents=True)
    for i in range(n):
        image_factory(i).save(root / "photos" / f"img{i:02d}.png")
    image_factory(90, mode="CMYK").save(root / "photos" / "cmyk.jpg")
    (root / "photos" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "photos" / "truncated.png").write_bytes(png(image_factory(91))[:200])
    image_factory(92).resize((1, 1)).save(root / "photos" / "one_pixel.png")
    with wds.TarWriter(str(root / "shard-00000.tar")) as sink:  # img2dataset layout
        for i in range(3):
            sink.write({"__key__": f"{i:09d}", "jpg": png(image_factory(100 + i)), "txt": b"a caption",
                        "json": json.dumps({"url": "x"}).encode()})
    pq.write_table(pa.table({"image": [{"bytes": png(image_factory(200 + i)), "path": f"p{i}.png"} for i in range(3)],
                             "image_name": [f"p{i}" for i in range(3)]}), root / "hf.parquet")
    (root / "extra.lst").write_text("photos/img00.png\nmissing.png\n")  # a duplicate path and a missing one


def test_mixed_pool_is_streamed_with_counts_and_reasons(tmp_path, image_factory, tiny_models):
    make_mixed_pool(tmp_path / "pool", image_factory)
    items = list(iter_pool(tmp_path / "pool"))
    kinds = {k: sum(i.kind == k for i in items) for k in ("file", "tar", "parquet")}
    assert kinds == {"file": 14, "tar": 3, "parquet": 3}
    encoder = ClipEncoder(tiny_models["clip"])
    cfg = PoolIndexConfig(source=str(tmp_path / "pool"), chunk_size=5)
    count = embed_pool(tmp_path / "pool", lambda: encoder, cfg, tmp_path / "chunks", "sha")
    rows = pa.concat_tables([pq.read_table(tmp_path / "chunks" / f"chunk-{i:06d}.parquet") for i in range(count)]).to_pylist()
    reasons = {r["id"]: r["reason"] for r in rows}
    assert reasons["photos/corrupt.jpg"] == "undecodable" and reasons["photos/truncated.png"] == "undecodable"
    assert reasons["photos/one_pixel.png"] == "too_small" and reasons["photos/cmyk.jpg"] == "converted_CMYK"
    assert reasons["missing.png"] == "missing_file"
    assert [r["reason"] for r in rows if r["id"] == "photos/img00.png"] == ["ok", "duplicate_path"]
    usable = [r for r in rows if r["usable"]]
    assert len(usable) == 8 + 1 + 3 + 3
    assert sum(len(e) for e in chunk_embeddings(tmp_path / "chunks", count)) == len(usable)
    found = load_items(tmp_path / "pool", ["shard-00000.tar/000000001.jpg", "hf.parquet#2", "photos/img03.png"])
    assert found["hf.parquet#2"] == png(image_factory(202)) and len(found) == 3


def test_killed_embedding_resumes_without_redoing_finished_chunks(tmp_path, image_factory, tiny_models):
    make_mixed_pool(tmp_path / "pool", image_factory)
    encoder = ClipEncoder(tiny_models["clip"])
    cfg = PoolIndexConfig(source=str(tmp_path / "pool"), chunk_size=4)
    count = embed_pool(tmp_path / "pool", lambda: encoder, cfg, tmp_path / "chunks", "sha")
    finished = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "chunks").iterdir()}
    (tmp_path / "chunks" / f"chunk-{count - 1:06d}.parquet").unlink()  # as if killed before the last chunk
    calls = []
    original = encoder.encode_pixels
    encoder.encode_pixels = lambda pixels: calls.append(len(pixels)) or original(pixels)
    assert embed_pool(tmp_path / "pool", lambda: encoder, cfg, tmp_path / "chunks", "sha") == count
    assert len(calls) == 1  # only the unfinished chunk was embedded again
    for name, mtime in finished.items():
        if not name.startswith(f"chunk-{count - 1:06d}"):
            assert (tmp_path / "chunks" / name).stat().st_mtime_ns == mtime
    calls.clear()
    embed_pool(tmp_path / "pool", lambda: encoder, cfg, tmp_path / "chunks", "other-model")
    assert len(calls) == count  # another CLIP model: nothing is reused


def test_missing_pool_fails_clearly(tmp_path):
    with pytest.raises(ConfigError, match="pool_index.source=.*not found"):
        check_source(str(tmp_path / "nope"))


def test_index_choice_follows_size_and_budget():
    assert choose_index(5_000, 512, 4096) == "flat"
    assert choose_index(1_000_000, 512, 4096) == "ivf_flat"
    assert choose_index(1_000_000, 512, 1024) == "ivf_sq8"
    assert choose_index(10_000_000, 512, 1024) == "ivf_pq"
    assert choose_index(10_000_000, 512, 5000) == "ivf_sq8"                     # 10M x 520 B fits 5 GB
    assert pq_bytes(512, 10_000_000, 2048) == 128                               # 10M x 136 B fits 2 GB
    assert pq_bytes(512, 10_000_000, 1024) == 64                                # 10M x 72 B fits 1 GB
    assert pq_bytes(512, 10_000_000, 100) == 32                                 # nothing fits: the coarsest
    assert pq_bytes(64, 20_000, 1) == 16                                        # 20k x 24 B fits 1 MB


@pytest.mark.parametrize("kind", ["flat", "ivf_flat", "ivf_sq8", "hnsw"])
def test_indexes_reach_target_recall_from_chunks_and_survive_save_load(kind, tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 32))
    x = (centers[rng.integers(0, 40, 4000)] + 0.3 * rng.normal(size=(4000, 32))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    chunks = lambda: iter(np.array_split(x, 3))  # noqa: E731
    index, description = build_index(chunks, len(x), 32, PoolIndexConfig(index=kind, target_recall=0.9))
    assert description["index"] == kind and description["recall_at_10"] >= 0.9
    save_index(index, description, tmp_path)
    _, found = load_index(tmp_path).search(x[:5], 1)
    assert found[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_auto_falls_back_to_exact_when_data_has_no_cluster_structure(monkeypatch):
    from pas.sources import pool_index as pool

    rng = np.random.default_rng(1)
    x = rng.normal(size=(20_000, 256)).astype(np.float32)  # isotropic: no cluster structure
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    monkeypatch.setattr(pool, "choose_index", lambda n, dim, budget: "ivf_flat")
    index, description = build_index(lambda: iter([x]), len(x), 256, PoolIndexConfig(target_recall=0.95))
    assert description["index"] == "flat" and description["fallback_from"]["index"] == "ivf_flat"
    assert description["fallback_from"]["nprobe"] * 2 > description["fallback_from"]["nlist"]
    assert index.ntotal == len(x)


def test_assign_gives_each_image_to_its_best_concept_within_quota():
    sims = np.array([[0.9, 0.8, 0.1], [0.95, 0.7, 0.6]])
    nbrs = np.array([[0, 1, 2], [0, 2, 1]])
    chosen = assign(sims, nbrs, quotas=[2, 2], min_similarity=0.0)
    owner = {c["pool_row"]: c["concept_index"] for c in chosen}
    assert owner == {0: 1, 1: 0, 2: 1}  # image 0 goes to concept 1 (0.95 > 0.9)
    assert assign(sims, nbrs, [2, 2], min_similarity=0.85) == [
        {"pool_row": 0, "concept_index": 1, "similarity": 0.95, "rank": 0}]


def test_retrieve_copies_images_into_shards_with_provenance(tiny_models, tmp_path, image_factory):
    make_mixed_pool(tmp_path / "pool", image_factory)
    encoder = ClipEncoder(tiny_models["clip"])
    cfg = PoolIndexConfig(source=str(tmp_path / "pool"))
    count = embed_pool(tmp_path / "pool", lambda: encoder, cfg, tmp_path / "chunks", read_entry(tiny_models["clip"])["sha256"])
    rows = pa.concat_tables([pq.read_table(tmp_path / "chunks" / f"chunk-{i:06d}.parquet") for i in range(count)])
    ids = [r["id"] for r in rows.to_pylist() if r["usable"]]
    index, _ = build_index(lambda: chunk_embeddings(tmp_path / "chunks", count), len(ids), 64, cfg)
    concepts = [{"name": n, "prompts": [f"a {n}", f"the {n}"]} for n in ("cat", "dog")]
    got, metrics = retrieve(index, concept_queries(encoder, concepts), concepts, ids, tmp_path / "pool", 6,
                            RetrieveConfig(shard_size=4), tmp_path / "ret")
    assert metrics["images"] == 6 and metrics["shards"] == 2
    assert len({r["pool_id"] for r in got}) == 6  # never the same image under two concepts
    assert sorted(r["concept"] for r in got) == ["cat"] * 3 + ["dog"] * 3
    keys = [k for shard in sorted((tmp_path / "ret").glob("*.tar")) for k, _, _ in read_shard(shard)]
    assert keys == [r["key"] for r in got]
    assert {"pool_source", "pool_id", "similarity", "rank", "prompt"} <= set(got[0])


def _two_concept_pool(n_a: int, n_b: int, dim: int = 16, seed: int = 0):
    """An exact index over n_a images near concept A's query and n_b near B's, and the two unit queries."""
    rng = np.random.default_rng(seed)
    queries = np.eye(dim, dtype=np.float32)[:2]
    vectors = np.concatenate([queries[0] + 0.3 * rng.normal(size=(n_a, dim)),
                              queries[1] + 0.3 * rng.normal(size=(n_b, dim))]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return index, queries


def test_quotas_come_from_the_plan_and_the_search_deepens_until_they_are_met():
    rng = np.random.default_rng(0)
    queries = np.eye(16, dtype=np.float32)[:2]
    vectors = ((queries[0] + queries[1]) / np.sqrt(2) + 0.3 * rng.normal(size=(600, 16))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(16)
    index.add(vectors)  # both concepts want the same images: the first 250 of each overlap
    selection = select(index, queries, [250, 250], RetrieveConfig(search_factor=1.0))
    counts = np.bincount([c["concept_index"] for c in selection.chosen], minlength=2)
    assert counts.tolist() == [250, 250] and selection.shortfall == {} and selection.depth > 250
    assert len({c["pool_row"] for c in selection.chosen}) == 500


def test_a_short_concept_is_filled_by_the_others_next_best_and_reported():
    index, queries = _two_concept_pool(100, 3)
    floor = float(np.sort(index.search(queries[1:], 103)[0][0])[::-1][2]) - 1e-6  # B has 3 images at the floor
    cfg = RetrieveConfig(min_similarity=min(floor, 0.5), shortfall="fill")
    selection = select(index, queries, [10, 10], cfg)
    b_images = sum(c["concept_index"] == 1 for c in selection.chosen)
    assert selection.shortfall == {1: 10 - b_images} and selection.filled == 10 - b_images > 0
    assert len(selection.chosen) == 20 and len({c["pool_row"] for c in selection.chosen}) == 20


def test_shortfall_error_stops_naming_the_concept(tmp_path):
    index, queries = _two_concept_pool(100, 3)
    concepts = [{"name": "apple pie", "prompts": ["x"]}, {"name": "rare bird", "prompts": ["y"]}]
    cfg = RetrieveConfig(min_similarity=0.5, shortfall="error")
    with pytest.raises(DataError, match=r"cannot fill the retrieval quota of 1 concept\(s\) \(missing 'rare bird': "):
        retrieve(index, queries, concepts, [str(i) for i in range(103)], tmp_path, 20, cfg, tmp_path / "out")


def test_retrieved_images_reuse_the_pool_vectors_of_the_same_clip_and_only_those(tmp_path, image_factory, tiny_models):
    make_mixed_pool(tmp_path / "pool", image_factory)
    sha = read_entry(tiny_models["clip"])["sha256"]
    out = tmp_path / "pool_index"
    index_pool(PoolIndexConfig(source=str(tmp_path / "pool"), chunk_size=4), tiny_models["clip"], out, 0)
    everything = np.concatenate(list(chunk_embeddings(out / "chunks", json.loads((out / "index.json").read_text())
                                                      ["chunks"])))
    picked = [5, 0, len(everything) - 1]
    assert np.array_equal(pool_embeddings(out, picked, sha), everything[picked])
    assert pool_embeddings(out, picked, "another-model") is None

    shard = tmp_path / "cand" / "c-000000.tar"
    write_shard(shard, [(f"k{i}", encode_jpeg(image_factory(300 + i)), {}) for i in range(3)])
    rows = [{"key": f"k{i}", "shard": str(shard), "source": "retrieved" if i else "generated"} for i in range(3)]
    encoder = ClipEncoder(tiny_models["clip"])
    calls = []
    original = encoder.encode_pixels
    encoder.encode_pixels = lambda pixels: calls.append(len(pixels)) or original(pixels)
    known = {1: everything[5], 2: everything[0]}
    embeddings, stats = embed_candidates(rows, encoder, known)
    assert calls == [1] and len(stats) == 3 and all(s["decodable"] for s in stats)  # one CLIP pass, not three
    assert np.array_equal(embeddings[1], everything[5]) and np.array_equal(embeddings[2], everything[0])
    alone, _ = embed_candidates(rows[:1], ClipEncoder(tiny_models["clip"]))
    assert np.allclose(embeddings[0], alone[0], atol=1e-5)


def _embedding_pool(root, image_factory, clip_dir, model="tiny://clip", parts=(25, 15)):
    """A clip-retrieval style pool of local images: img_emb/ + metadata/ parts and embedding_model.txt."""
    (root / "images").mkdir(parents=True)
    paths = []
    for i in range(sum(parts)):
        image_factory(500 + i).save(root / "images" / f"img{i:02d}.png")
        paths.append(f"images/img{i:02d}.png")
    from PIL import Image

    vectors = ClipEncoder(clip_dir).encode_images(Image.open(root / p) for p in paths).astype(np.float16)
    (root / "img_emb").mkdir()
    (root / "metadata").mkdir()
    start = 0
    for n, rows in enumerate(parts):
        np.save(root / "img_emb" / f"img_emb_{n}.npy", vectors[start:start + rows])
        pq.write_table(pa.table({"image_path": paths[start:start + rows],
                                 "url": [f"http://example.invalid/{i}.jpg" for i in range(start, start + rows)],
                                 "caption": [f"a thing {i}" for i in range(start, start + rows)]}),
                       root / "metadata" / f"metadata_{n}.parquet")
        start += rows
    (root / "embedding_model.txt").write_text(model + "\n")
    return vectors.astype(np.float32)


def test_a_pool_of_precomputed_embeddings_is_indexed_and_retrieved_without_reembedding(tmp_path, image_factory,
                                                                                         tiny_models, monkeypatch):
    vectors = _embedding_pool(tmp_path / "pool", image_factory, tiny_models["clip"])
    monkeypatch.setattr(ClipEncoder, "encode_pixels", lambda *a: pytest.fail("a precomputed pool was re-embedded"))
    out = tmp_path / "index"
    metrics = index_pool(PoolIndexConfig(source=str(tmp_path / "pool")), tiny_models["clip"], out, 0)
    assert metrics["indexed"] == 40 and metrics["kind"] == "embeddings" and metrics["parts"] == 2
    files = pq.read_table(out / "files.parquet")
    assert files.column("id").to_pylist()[26] == "images/img26.png" and files.column("pool_row").to_pylist()[26] == 26
    assert files.column("caption").to_pylist()[3] == "a thing 3"
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert np.allclose(pool_embeddings(out, [3, 30], read_entry(tiny_models["clip"])["sha256"]), unit[[3, 30]],
                       atol=1e-6)
    _, found = load_index(out).search(unit[[7, 33]], 1)
    assert found[:, 0].tolist() == [7, 33]

    encoder = ClipEncoder(tiny_models["clip"])
    concepts = [{"name": n, "prompts": [f"a {n}"]} for n in ("cat", "dog")]
    monkeypatch.undo()
    rows, got = retrieve(load_index(out), concept_queries(encoder, concepts), concepts,
                         files.column("id").to_pylist(), tmp_path / "pool", 10, RetrieveConfig(), tmp_path / "ret")
    assert got["images"] == 10 and all(r["pool_id"].startswith("images/img") for r in rows)


def test_a_pool_embedded_by_another_model_is_refused_naming_both(tmp_path, image_factory, tiny_models):
    _embedding_pool(tmp_path / "pool", image_factory, tiny_models["clip"], model="ViT-L-14/laion2b_s32b_b82k")
    with pytest.raises(ConfigError, match=r"was embedded with 'ViT-L-14/laion2b_s32b_b82k' but models\.clip is "
                                          r"'tiny://clip'; a pool embedded by another CLIP cannot answer"):
        index_pool(PoolIndexConfig(source=str(tmp_path / "pool")), tiny_models["clip"], tmp_path / "index", 0)


def test_embedding_parts_that_do_not_match_their_metadata_are_refused(tmp_path, image_factory, tiny_models):
    _embedding_pool(tmp_path / "pool", image_factory, tiny_models["clip"])
    np.save(tmp_path / "pool" / "img_emb" / "img_emb_1.npy", np.zeros((3, 64), np.float16))
    with pytest.raises(DataError, match=r"img_emb_1\.npy holds \(3, 64\) embeddings but metadata_1\.parquet 15 rows"):
        index_pool(PoolIndexConfig(source=str(tmp_path / "pool")), tiny_models["clip"], tmp_path / "index", 0)


def test_a_single_parquet_with_an_embedding_column_is_a_pool_too(tmp_path, image_factory, tiny_models):
    vectors = _embedding_pool(tmp_path / "pool", image_factory, tiny_models["clip"], parts=(12,))
    table = pq.read_table(tmp_path / "pool" / "metadata" / "metadata_0.parquet")
    table = table.append_column("embedding", pa.array(list(vectors), type=pa.list_(pa.float32())))
    pq.write_table(table, tmp_path / "pool" / "pool.parquet")
    cfg = PoolIndexConfig(source=str(tmp_path / "pool" / "pool.parquet"))
    metrics = index_pool(cfg, tiny_models["clip"], tmp_path / "index", 0)
    assert metrics["indexed"] == 12 and metrics["embedding_model"] == "tiny://clip"


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(64, dim))
    x = centers[rng.integers(0, 64, n)] + 0.5 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_lists_larger_than_the_budget_are_built_on_disk_resumably_and_search_like_memory(tmp_path):
    data = _clustered(20_000, 64)
    blocks = lambda: iter(np.array_split(data, 5))  # noqa: E731
    cfg = PoolIndexConfig(index="ivf_sq8", memory_budget_mb=1, target_recall=0.9)   # 20k x 72 B > 1 MB
    on_disk, description = build_index(blocks, len(data), 64, cfg, disk=tmp_path / "index")
    assert description["on_disk"] and description["list_bytes"] == 20_000 * (64 + 8)
    assert (tmp_path / "index" / "lists.ivfdata").stat().st_size >= 20_000 * 64
    save_index(on_disk, description, tmp_path / "index")
    in_memory, _ = build_index(blocks, len(data), 64, PoolIndexConfig(index="ivf_sq8", target_recall=0.9))
    queries = data[:50] + 0.01
    faiss.extract_index_ivf(in_memory).nprobe = description["nprobe"]
    loaded = load_index(tmp_path / "index")
    assert np.array_equal(loaded.search(queries, 10)[1], in_memory.search(queries, 10)[1])
    assert description["recall_at_10"] >= 0.9

    kept = sorted((tmp_path / "index" / "blocks").iterdir())
    assert len(kept) == 5
    stamps = {p.name: p.stat().st_mtime_ns for p in kept[:4]}
    kept[4].unlink()                                                       # as if killed during the last block
    again, _ = build_index(blocks, len(data), 64, cfg, disk=tmp_path / "index")
    assert {p.name: p.stat().st_mtime_ns for p in sorted((tmp_path / "index" / "blocks").iterdir())[:4]} == stamps
    faiss.extract_index_ivf(again).nprobe = description["nprobe"]
    assert np.array_equal(again.search(queries, 10)[1], in_memory.search(queries, 10)[1])


def test_exemplar_images_pull_a_concept_query_toward_them(tmp_path, image_factory, tiny_models):
    from pas.sources.retrieve import blend_exemplars

    encoder = ClipEncoder(tiny_models["clip"])
    concepts = [{"name": "snow leopard", "prompts": ["a snow leopard"]}, {"name": "cat", "prompts": ["a cat"]},
                {"name": "dog", "prompts": ["a dog"]}]
    text = concept_queries(encoder, concepts)
    seeds = [image_factory(900 + i) for i in range(3)]
    (tmp_path / "ex" / "snow leopard").mkdir(parents=True)
    for i, image in enumerate(seeds):
        image.save(tmp_path / "ex" / "snow leopard" / f"{i}.png")
    image_factory(950).save(tmp_path / "ex" / "domain.png")                  # the domain's: for cat and dog
    queries, used = blend_exemplars(text, concepts, tmp_path / "ex", encoder, 0.5)
    assert used == {"concepts_with_exemplars": 1, "domain_exemplars": 1}
    seed_mean = encoder.encode_images(seeds).mean(axis=0)
    seed_mean /= np.linalg.norm(seed_mean)
    assert queries[0] @ seed_mean > text[0] @ seed_mean + 0.1               # moved toward its exemplars
    assert np.allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(queries[1], text[1])                              # cat: blended with the domain's
    unchanged, none = blend_exemplars(text, concepts, tmp_path / "none", encoder, 0.5)
    assert np.array_equal(unchanged, text) and none["domain_exemplars"] == 0


def test_shortfall_generate_leaves_the_gap_to_generation_which_makes_it_up(tmp_path, image_factory):
    from pas.sources.generate import makeup_jobs, plan_jobs, retrieval_shortfall

    index, queries = _two_concept_pool(100, 3)
    concepts = [{"name": "apple pie", "prompts": ["a pie", "pie on a plate"]}, {"name": "rare bird", "prompts": ["y"]}]
    cfg = RetrieveConfig(min_similarity=0.5, shortfall="generate")
    for i in range(103):
        image_factory(i).save(tmp_path / f"{i}.png")
    rows, metrics = retrieve(index, queries, concepts, [f"{i}.png" for i in range(103)], tmp_path, 20, cfg,
                             tmp_path / "o")
    assert metrics["filled"] == 0 and metrics["images"] == 20 - metrics["shortfall"] > 0   # nothing filled in
    missing = retrieval_shortfall(tmp_path / "o" / "shortfall.json")
    assert missing == {"rare bird": metrics["shortfall"]}
    planned = plan_jobs(concepts, 10, seed=0)
    extra = makeup_jobs(concepts, missing, len(planned), seed=0)
    assert [j["concept"] for j in extra] == ["rare bird"] * metrics["shortfall"]
    assert len({j["key"] for j in planned + extra}) == len(planned) + len(extra)        # keys never collide
    (tmp_path / "fill.json").write_text('{"policy": "fill", "missing": {"rare bird": 3}}')
    assert retrieval_shortfall(tmp_path / "fill.json") == {}                # fill: generation does nothing extra


def test_pq_candidates_are_reranked_exactly_from_the_stored_vectors():
    from pas.sources.rerank import Reranked

    data = _clustered(20_000, 64, seed=3)
    rows = lambda ids: data[ids]  # noqa: E731
    cfg = PoolIndexConfig(index="ivf_pq", target_recall=0.9, rerank=200)  # 8-byte codes at 64 dims: very coarse
    index, description = build_index(lambda: iter(np.array_split(data, 4)), len(data), 64, cfg, rows=rows)
    assert isinstance(index, Reranked) and description["recall_at_10"] >= 0.9
    assert 1 < description["rerank"] < 200 and index.factor == description["rerank"]   # tuned, not the maximum
    queries = data[:100]
    truth = faiss.IndexFlatIP(64)
    truth.add(data)
    exact_scores, exact_ids = truth.search(queries, 10)
    scores, ids = index.search(queries, 10)
    assert recall(ids, exact_ids) > recall(index.index.search(queries, 10)[1], exact_ids)   # better than PQ alone
    hits = ids == exact_ids
    assert np.allclose(scores[hits], exact_scores[hits], atol=1e-5)     # scores are the exact inner products
    plain, _ = build_index(lambda: iter([data]), len(data), 64, PoolIndexConfig(index="ivf_pq", rerank=0), rows=rows)
    assert not isinstance(plain, Reranked)


def test_rerank_factor_alone_cannot_reach_a_recall_the_codes_forbid():
    from pas.sources.pool_index import tune
    from pas.sources.rerank import Reranked

    data = _clustered(5_000, 64, seed=4)
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(64), 64, 70, 8, 8, faiss.METRIC_INNER_PRODUCT)
    index.train(data)
    index.add(data)
    queries = data[:50] + 0.01
    truth = faiss.IndexFlatIP(64)
    truth.add(data)
    exact = truth.search(queries, 10)[1]
    capped = Reranked(index, lambda ids: data[ids], 2)              # at most 2 x k candidates
    settings, achieved = tune(capped, queries, exact, 0.99)
    assert settings["rerank"] <= 2 and achieved < 0.99                 # the cap holds; recall reported as reached
    free = Reranked(index, lambda ids: data[ids], 500)
    settings, achieved = tune(free, queries, exact, 0.99)
    assert achieved >= 0.99 and settings["rerank"] > 2


def test_pq_lists_within_the_budget_are_built_in_resumable_blocks_and_merged_in_memory(tmp_path):
    data = _clustered(20_000, 64, seed=5)
    blocks = lambda: iter(np.array_split(data, 8))  # noqa: E731
    cfg = PoolIndexConfig(index="ivf_pq", memory_budget_mb=1, target_recall=0.9, rerank=0)  # 20k x 16 B < 1 MB
    built, description = build_index(blocks, len(data), 64, cfg, disk=tmp_path / "index")
    assert not description["on_disk"] and not (tmp_path / "index" / "lists.ivfdata").exists()
    assert description["pq_bytes"] == 16 and built.ntotal == 20_000
    files = sorted((tmp_path / "index" / "blocks").iterdir())
    assert len(files) == 3                                             # 1 MB / 8 / 24 B: 5,461 vectors a block
    plain, _ = build_index(blocks, len(data), 64, cfg)
    faiss.extract_index_ivf(plain).nprobe = description["nprobe"]
    queries = data[:50] + 0.01
    assert np.array_equal(built.search(queries, 10)[1], plain.search(queries, 10)[1])
    stamps = [f.stat().st_mtime_ns for f in files[:2]]
    files[2].unlink()                                                   # killed during the last block
    again, _ = build_index(blocks, len(data), 64, cfg, disk=tmp_path / "index")
    assert [f.stat().st_mtime_ns for f in files[:2]] == stamps and files[2].exists()
    assert np.array_equal(again.search(queries, 10)[1], built.search(queries, 10)[1])
