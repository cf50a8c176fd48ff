import numpy as np
import pytest

from pas.clip import ClipEncoder
from pas.config import ConfigError
from pas.pool import build_index, check_source, load_index, recall_at_k, save_index, scan_pool
from pas.retrieve import RetrieveConfig, assign, concept_queries, retrieve
from pas.shards import read_shard


def make_pool(folder, image_factory, n=12):
    (folder / "sub").mkdir(parents=True)
    for i in range(n):
        image_factory(i).save(folder / "sub" / f"img{i:02d}.png")
    image_factory(99, mode="CMYK").save(folder / "cmyk.jpg")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    image_factory(98).resize((1, 1)).save(folder / "tiny.png")
    (folder / "notes.txt").write_text("not an image")


def test_scan_pool_skips_bad_files_with_reasons(tmp_path, image_factory):
    make_pool(tmp_path, image_factory)
    rows = []
    images = list(scan_pool(tmp_path, min_side=8, rows=rows))
    reasons = {r["path"]: r["reason"] for r in rows}
    assert reasons["corrupt.jpg"] == "undecodable" and reasons["tiny.png"] == "too_small"
    assert reasons["cmyk.jpg"] == "converted_CMYK"
    assert len(images) == 13 == sum(r["usable"] for r in rows) and all(im.mode == "RGB" for im in images)
    assert "notes.txt" not in reasons


def test_missing_pool_folder_fails_clearly(tmp_path):
    with pytest.raises(ConfigError, match="pool_index.source=.*folder not found"):
        check_source(str(tmp_path / "nope"))


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_indexes_find_true_neighbours_and_survive_save_load(kind, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index, chosen = build_index(x, kind)
    assert chosen == kind
    assert recall_at_k(index, x, k=10) >= (0.99 if kind == "flat" else 0.5)
    save_index(index, tmp_path / "i.faiss")
    _, found = load_index(tmp_path / "i.faiss").search(x[:5], 1)
    if kind == "flat":
        assert found[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_assign_gives_each_image_to_its_best_concept_within_quota():
    sims = np.array([[0.9, 0.8, 0.1], [0.95, 0.7, 0.6]])
    nbrs = np.array([[0, 1, 2], [0, 2, 1]])
    chosen = assign(sims, nbrs, quotas=[2, 2], min_similarity=0.0)
    owner = {c["pool_row"]: c["concept_index"] for c in chosen}
    assert owner == {0: 1, 1: 0, 2: 1}  # image 0 goes to concept 1 (0.95 > 0.9)
    assert len(owner) == len(chosen)
    assert assign(sims, nbrs, [2, 2], min_similarity=0.85) == [
        {"pool_row": 0, "concept_index": 1, "similarity": 0.95, "rank": 0}]


def test_retrieve_copies_images_into_shards_with_provenance(tiny_models, tmp_path, image_factory):
    make_pool(tmp_path / "pool", image_factory)
    encoder = ClipEncoder(tiny_models["clip"])
    rows = []
    emb = encoder.encode_images(scan_pool(tmp_path / "pool", 8, rows))
    index, _ = build_index(emb, "flat")
    concepts = [{"name": n, "prompts": [f"a {n}", f"the {n}"]} for n in ("cat", "dog")]
    paths = [r["path"] for r in rows if r["usable"]]
    out = tmp_path / "ret"
    got, metrics = retrieve(index, concept_queries(encoder, concepts), concepts, paths, tmp_path / "pool", 6,
                            RetrieveConfig(k=10, shard_size=4), out)
    assert metrics["images"] == 6 and metrics["shards"] == 2
    assert len({r["pool_id"] for r in got}) == 6
    assert sorted(r["concept"] for r in got) == ["cat"] * 3 + ["dog"] * 3
    keys = [k for shard in sorted(out.glob("*.tar")) for k, _, _ in read_shard(shard)]
    assert keys == [r["key"] for r in got]
    assert {"pool_source", "pool_id", "similarity", "rank", "prompt"} <= set(got[0])
