from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from pas.core.config import DataError
from pas.core.shards import encode_jpeg, write_shard, write_table
from pas.curation.balance import balance, cluster_balance, round_robin
from pas.curation.decontam import Contamination
from pas.curation.dedup import STATUSES, DedupConfig, curate
from pas.curation.duplicates import duplicate_groups, find_duplicates, keep_one_per_group, source_breakdown
from pas.curation.embed import candidate_rows, pixel_hash, stream_images
from pas.curation.filter import FilterConfig, concept_scores, domain_scores, reasons


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


def test_exact_copies_are_grouped_by_content_hash_even_without_other_evidence():
    e = unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    dups = find_duplicates(e, ["", "", ""], threshold=0.99, content=["sha-a", "sha-b", "sha-a"])
    assert dups.groups[0] == dups.groups[2] != dups.groups[1]
    assert dups.edges == {"embedding": 0, "pixel_hash": 0, "content_hash": 1}
    assert np.allclose(dups.nearest, [0, 0, 0], atol=1e-6)  # exact search: true nearest-neighbour cosine


def test_keep_rule_can_prefer_a_source_across_sources():
    groups, scores, keys = np.array([0, 0, 1, 1]), np.array([0.9, 0.1, 0.2, 0.8]), ["g0", "r0", "r1", "g1"]
    sources = ["generated", "retrieved", "retrieved", "generated"]
    assert keep_one_per_group(groups, scores, keys).tolist() == [True, False, False, True]
    preferred = np.array([s == "retrieved" for s in sources])
    keep = keep_one_per_group(groups, scores, keys, preferred)
    assert keep.tolist() == [False, True, True, False]
    assert source_breakdown(groups, keep, sources) == {
        "removed_by_source": {"generated": 2, "retrieved": 0}, "groups_within_source": 0, "groups_across_sources": 2}


def clean(n):
    return Contamination(["toy/test"], np.full(n, -1), np.full(n, -1), [""] * n, np.full(n, np.nan, np.float32),
                         np.full(n, np.nan, np.float32), {"toy/test": 0}, {"toy/test": 10})


def test_curate_gives_every_candidate_one_status_and_exactly_size():
    rng = np.random.default_rng(0)
    e = unit(rng.standard_normal((12, 16)))
    e[1] = e[0]  # a near-duplicate of row 0
    rows = [{"key": f"k{i:02d}", "shard": "s.tar", "source": "generated" if i % 2 else "retrieved",
             "concept": "ab"[i % 2], "domain_score": i / 12, "concept_score": 0.5, "pixel_hash": ""} for i in range(12)]
    dirty = clean(12)
    dirty.set_index[5], dirty.item[5], dirty.signal[5] = 0, 3, "copy"
    result = curate(rows, e, [""] * 12, dirty, 6, ["a", "b"], DedupConfig())
    status = {d["key"]: d["status"] for d in result.decisions}
    assert status["k05"] == "contaminated" and status["k00"] == "duplicate" and status["k01"] != "duplicate"
    assert len(result.curated) == 6 and result.metrics["status"]["curated"] == 6
    assert sum(result.metrics["status"].values()) == len(rows) == result.metrics["input"]
    assert set(result.metrics["status"]) == set(STATUSES)
    assert result.metrics["per_concept"] == {"a": 3, "b": 3}
    assert next(d for d in result.decisions if d["key"] == "k05")["eval_item"] == 3
    assert result.metrics["concepts_without_images"] == 0


def test_concepts_left_without_an_image_are_counted_and_named(caplog):
    """size below the concept count (the shipped food bank's 402 concepts at size 300) leaves concepts empty."""
    rng = np.random.default_rng(1)
    e = unit(rng.standard_normal((8, 16)))
    rows = [{"key": f"k{i}", "shard": "s.tar", "source": "generated", "concept": "abcd"[i % 4], "domain_score": 0.5,
             "concept_score": 0.5, "pixel_hash": ""} for i in range(8)]
    with caplog.at_level("WARNING"):
        few = curate(rows, e, [""] * 8, clean(8), 2, ["a", "b", "c", "d"], DedupConfig())
    assert few.metrics["concepts_without_images"] == 2
    assert "2 of 4 concepts have no curated image" in caplog.text
    assert "size=2 is below the 4 concepts; raise size, or keep fewer concepts (concepts.count)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        unseen = curate(rows, e, [""] * 8, clean(8), 5, ["a", "b", "c", "d", "e"], DedupConfig())
    assert unseen.metrics["concepts_without_images"] == 1
    assert "1 of 5 concepts have no curated image (e.g. e): 0 had candidates left after filtering, de-duplication " \
           "and decontamination, which balancing (concepts) and the source mix did not pick; 1 had none left" \
           in caplog.text


def test_cluster_balance_samples_evenly_across_kmeans_clusters():
    rng = np.random.default_rng(1)
    centers = unit(rng.standard_normal((3, 32)))
    sizes = [40, 10, 5]
    e = unit(np.concatenate([c + 0.05 * rng.standard_normal((n, 32)) for c, n in zip(centers, sizes)]))
    rows = [{"key": f"k{i:03d}", "domain_score": 0.0, "concept": "x"} for i in range(len(e))]
    picked, labels = cluster_balance(rows, e, 15, k=3)
    counts = sorted(np.bincount(labels[picked], minlength=3).tolist())
    assert len(picked) == 15 and counts == [5, 5, 5]  # the smallest cluster is not crowded out
    assert picked == cluster_balance(rows, e, 15, k=3)[0]
    full = [{**r, "shard": "s.tar", "source": "retrieved", "concept_score": 0.0, "pixel_hash": ""} for r in rows]
    cfg = DedupConfig(balance="clusters", clusters=3, threshold=0.999)
    result = curate(full, e, [""] * len(rows), clean(len(rows)), 15, ["x"], cfg)
    assert sorted(result.metrics["per_cluster"].values()) == [5, 5, 5]


def test_round_robin_visits_unlisted_labels_too():
    assert round_robin(["a", "z", "z"], [0.1, 0.5, 0.4], ["a0", "z0", "z1"], 3, order=["a"]) == [0, 1, 2]


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
    from pas.core.shards import decode_image

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
    assert images[1].size == (1, 1)                          # the corrupt record's stand-in, not a crash
    rows = [{**row, **stat} for row, stat in zip(rows, stats)]
    write_table(rows, tmp_path / "m.parquet")                # the stats columns round-trip through parquet
    back = pq.read_table(tmp_path / "m.parquet").to_pylist()
    assert [r["key"] for r in back] == ["k0", "k1", "k2"] and [r["decodable"] for r in back] == [True, False, True]


def test_source_share_meets_the_mix_target_per_concept_and_overall():
    from pas.curation.balance import source_share

    rows = [{"key": f"{c}{s}{i}", "concept": c, "source": s, "domain_score": 1.0 - i / 100}
            for c in ("cat", "dog") for s in ("generated", "retrieved") for i in range(10)]
    picked = balance(rows, 10, ["cat", "dog"])
    for share, real in ((0.5, 5), (0.3, 3), (1.0, 10), (0.0, 0)):
        chosen = source_share(rows, [r["concept"] for r in rows], picked, share)
        assert len(chosen) == 10 and sum(rows[i]["source"] == "retrieved" for i in chosen) == real
        per_concept = Counter(rows[i]["concept"] for i in chosen)
        assert per_concept == {"cat": 5, "dog": 5}                       # each concept keeps its count
    best = source_share(rows, [r["concept"] for r in rows], picked, 0.4)
    assert {rows[i]["key"] for i in best if rows[i]["concept"] == "cat"} == {"catretrieved0", "catretrieved1",
                                                                           "catgenerated0", "catgenerated1",
                                                                           "catgenerated2"}


def test_a_source_short_of_its_share_leaves_room_to_the_other():
    from pas.curation.balance import source_share

    rows = [{"key": f"g{i}", "concept": "cat", "source": "generated", "domain_score": 0.5} for i in range(8)]
    rows += [{"key": "r0", "concept": "cat", "source": "retrieved", "domain_score": 0.9}]
    chosen = source_share(rows, ["cat"] * len(rows), list(range(6)), share=0.5)
    assert len(chosen) == 6 and sum(rows[i]["source"] == "retrieved" for i in chosen) == 1


def test_source_share_ranks_by_domain_score_then_key_and_splits_by_largest_remainder():
    import random

    from pas.curation.balance import source_share

    rows = [{"key": f"{c}-{s}-{i:02d}", "concept": c, "source": s, "domain_score": round(0.1 * (i % 5), 1)}
            for c in ("cat", "dog") for s in ("generated", "retrieved") for i in range(10)]   # ties: i and i + 5
    random.Random(0).shuffle(rows)                                       # list order says nothing about rank
    labels = [r["concept"] for r in rows]
    cats = [i for i, r in enumerate(rows) if r["concept"] == "cat"][:3]
    dogs = [i for i, r in enumerate(rows) if r["concept"] == "dog"][:7]
    chosen = source_share(rows, labels, cats + dogs, 0.4)                # 10 x 0.4 = 4 retrieved
    real = Counter(rows[i]["concept"] for i in chosen if rows[i]["source"] == "retrieved")
    assert real == {"cat": 1, "dog": 3}        # cat 1.2, dog 2.8: the spare image goes to dog's larger remainder
    picked_cat_real = [rows[i] for i in chosen if rows[i]["concept"] == "cat" and rows[i]["source"] == "retrieved"]
    assert [r["key"] for r in picked_cat_real] == ["cat-retrieved-04"]   # 04 and 09 tie at 0.4: the key decides
    dog_real = sorted(r["key"] for i, r in enumerate(rows) if i in chosen and r["concept"] == "dog"
                      and r["source"] == "retrieved")
    assert dog_real == ["dog-retrieved-03", "dog-retrieved-04", "dog-retrieved-09"]   # 0.4, 0.4, then 0.3 (03 < 08)
