import numpy as np
import pytest

from pas.config import DataError
from pas.dedup import balance, contaminated, duplicate_groups, keep_one_per_group
from pas.embed import candidate_rows, pixel_hash, stream_images
from pas.filter import FilterConfig, concept_scores, domain_scores, reasons
from pas.shards import encode_jpeg, write_shard, write_table


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_domain_score_is_a_softmax_margin():
    pos, neg = unit([[1, 0, 0]]), unit([[0, 1, 0], [0, 0, 1]])
    scores = domain_scores(unit([[1, 0.1, 0], [0, 1, 0.1]]), pos, neg, scale=10.0)
    assert scores[0] > 0.9 and scores[1] < -0.9
    assert np.all((-1 <= scores) & (scores <= 1))


def test_concept_score_prefers_own_concept():
    queries = unit([[1, 0], [0, 1]])
    s = concept_scores(unit([[1, 0.2], [1, 0.2]]), np.array([0, 1]), queries, scale=10.0)
    assert s[0] > 0.5 > s[1]


def test_every_rejection_has_a_reason_in_rule_order():
    base = {"width": 64, "height": 64, "decodable": True, "pixel_std": 30.0}
    rows = [base, {**base, "decodable": False}, {**base, "width": 8}, {**base, "width": 200},
            {**base, "pixel_std": 0.5}, base, base]
    domain = np.array([0.5, 0.5, 0.5, 0.5, 0.5, -0.9, 0.5])
    concept = np.array([0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.01])
    cfg = FilterConfig(threshold=0.0, concept_threshold=0.1)
    assert reasons(rows, domain, concept, cfg) == [
        "", "undecodable", "too_small", "aspect_ratio", "near_constant", "out_of_domain", "concept_mismatch"]


def test_duplicate_groups_join_near_copies_and_equal_hashes():
    e = unit([[1, 0, 0], [0.999, 0.01, 0], [0, 1, 0], [0, 0, 1], [0, 0.5, 1]])
    groups = duplicate_groups(e, ["a", "b", "c", "c", ""], threshold=0.99)
    assert groups[0] == groups[1] and groups[2] == groups[3] and groups[4] not in (groups[0], groups[2])
    keep = keep_one_per_group(groups, np.array([0.1, 0.9, 0.5, 0.5, 0.0]), ["k0", "k1", "k2", "k3", "k4"])
    assert keep.tolist() == [False, True, True, False, True]


def test_contamination_by_embedding_and_by_hash():
    cand = unit([[1, 0], [0, 1], [1, 1]])
    dirty = contaminated(cand, ["h0", "h1", "h2"], unit([[1, 0.01]]), {"h2"}, threshold=0.99)
    assert dirty.tolist() == [True, False, True]


def test_balance_gives_exact_size_evenly_and_fills_short_concepts():
    rows = [{"key": f"a{i}", "concept": "a", "domain_score": i / 10} for i in range(10)]
    rows += [{"key": "b0", "concept": "b", "domain_score": 0.5}]
    rows += [{"key": f"c{i}", "concept": "c", "domain_score": 0.1} for i in range(10)]
    picked = [rows[i] for i in balance(rows, 9, ["a", "b", "c"])]
    counts = {c: sum(r["concept"] == c for r in picked) for c in "abc"}
    assert len(picked) == 9 and counts == {"a": 4, "b": 1, "c": 4}
    assert {r["key"] for r in picked if r["concept"] == "a"} == {"a9", "a8", "a7", "a6"}
    assert balance(rows, 9, ["a", "b", "c"]) == balance(rows, 9, ["a", "b", "c"])
    with pytest.raises(DataError, match="only 21 images survived.*size=50"):
        balance(rows, 50, ["a", "b", "c"])


def test_pixel_hash_survives_reencoding(image_factory):
    from pas.shards import decode_image

    image = image_factory(3)
    assert pixel_hash(decode_image(encode_jpeg(image, 95))) == pixel_hash(image)
    assert pixel_hash(image_factory(4)) != pixel_hash(image)
    assert pixel_hash(image.convert("L").point(lambda _: 9)) == ""  # blank images have no hash


def test_candidate_stream_records_stats_and_survives_corrupt_bytes(tmp_path, image_factory):
    records = [("k0", encode_jpeg(image_factory(0)), {}), ("k1", b"garbage", {}),
               ("k2", encode_jpeg(image_factory(0).convert("L").point(lambda _: 7)), {})]
    write_shard(tmp_path / "s-000000.tar", records)
    import pyarrow as pa

    table = pa.Table.from_pylist([{"key": k, "shard": "s-000000.tar", "source": "generated", "concept": "c"}
                                  for k, _, _ in records])
    rows = candidate_rows([(table, tmp_path)])
    stats = []
    images = list(stream_images(rows, stats))
    assert len(images) == 3 and [s["decodable"] for s in stats] == [True, False, True]
    assert stats[2]["pixel_std"] == 0.0 and stats[0]["pixel_std"] > 10
    write_table(rows, tmp_path / "m.parquet")
