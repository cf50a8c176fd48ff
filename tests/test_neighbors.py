"""Pair search: exact and IVF agree on planted near-duplicates; IVF never reports a pair below the threshold."""
import logging
import re

import numpy as np
import pytest

from pas.core.config import ConfigError, build
from pas.curation.dedup import DedupConfig
from pas.curation.neighbors import SearchConfig, choose_method, similar_pairs


def clustered(n, d=64, clusters=40, planted=60, seed=0):
    """Unit vectors in clusters plus `planted` near-copies (cosine 0.96..0.995) of random rows."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d))
    x = centers[rng.integers(0, clusters, n)] + rng.standard_normal((n, d)) / np.sqrt(d) * 1.5
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src, dst = rng.permutation(n)[: 2 * planted].reshape(2, planted)
    for a, b in zip(src, dst):
        noise = rng.standard_normal(d)
        noise -= (noise @ x[a]) * x[a]
        cos = rng.uniform(0.96, 0.995)
        v = x[a] + np.sqrt(1 / cos**2 - 1) * noise / np.linalg.norm(noise)
        x[b] = v / np.linalg.norm(v)
    return x.astype(np.float32), {(min(a, b), max(a, b)) for a, b in zip(src, dst)}


def as_set(found):
    return set(zip(found.queries.tolist(), found.base.tolist()))


def test_exact_matches_brute_force_and_reports_nearest_neighbours():
    x, planted = clustered(700)
    found = similar_pairs(x, 0.95, cfg=SearchConfig(index="exact"))
    sims = x @ x.T
    np.fill_diagonal(sims, -1)
    i, j = np.nonzero(np.triu(sims >= 0.95, 1))
    assert as_set(found) == set(zip(i.tolist(), j.tolist())) >= planted
    assert np.allclose(found.best, sims.max(axis=1), atol=1e-5)
    assert np.allclose(found.similarity, sims[found.queries, found.base], atol=1e-5)


def test_ivf_finds_the_exact_pairs_without_false_positives():
    x, planted = clustered(6000, planted=150)
    x = x.astype(np.float16)  # as stored on disk
    exact = similar_pairs(x, 0.95, cfg=SearchConfig(index="exact"))
    ivf = similar_pairs(x, 0.95, cfg=SearchConfig(index="ivf", nlist=32, nprobe=4, reduce_dim=32))
    assert ivf.method == "ivf" and len(exact.queries) >= len(planted)
    recall = len(as_set(ivf) & as_set(exact)) / len(as_set(exact))
    assert recall >= 0.99 and as_set(ivf) <= as_set(exact)
    assert np.all(ivf.similarity >= 0.95) and np.all(ivf.queries < ivf.base)


def test_ivf_cross_join_matches_exact():
    x, _ = clustered(4000, planted=0, seed=1)
    queries = x[:300] + np.random.default_rng(2).standard_normal((300, x.shape[1])).astype(np.float32) * 0.02
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    base = x[:3000]
    exact = similar_pairs(base, 0.9, queries=queries, cfg=SearchConfig(index="exact"))
    ivf = similar_pairs(base, 0.9, queries=queries, cfg=SearchConfig(index="ivf", nlist=16, nprobe=4, reduce_dim=0))
    assert len(exact.queries) >= 300 and as_set(ivf) == as_set(exact)


def test_auto_is_exact_where_it_fits_and_ivf_beyond():
    cfg = SearchConfig(exact_max=1000)
    assert choose_method(1000, 1000, cfg) == "exact"
    assert choose_method(1001, 1001, cfg) == "ivf"
    assert choose_method(10, 100_000, cfg) == "exact"  # sqrt(10 * 100k) = 1000
    assert choose_method(10, 10, SearchConfig(index="ivf")) == "ivf"


def test_empty_inputs_give_no_pairs():
    found = similar_pairs(np.zeros((0, 8), np.float32), 0.9, queries=np.ones((3, 8), np.float32))
    assert len(found.queries) == 0 and found.best.shape == (3,) and np.isnan(found.best).all()
    assert found.queries.dtype == found.base.dtype == np.int64 and found.base.shape == (0,)
    assert found.similarity.dtype == found.best.dtype == np.float32 and found.similarity.shape == (0,)
    assert found.method == "exact"
    none = similar_pairs(np.ones((5, 8), np.float32), 0.9, queries=np.zeros((0, 8), np.float32),
                         cfg=SearchConfig(index="ivf"))
    assert none.method == "ivf" and none.best.shape == (0,) and none.base.dtype == np.int64


@pytest.mark.parametrize("key,value", [("index", "hnsw"), ("nprobe", 0), ("margin", 1.5), ("threshold", 0.0),
                                       ("balance", "random"), ("prefer_source", "web")])
def test_bad_dedup_params_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"dedup.{key}"):
        build(DedupConfig, {key: value}, "dedup")


# --- boundaries, dtypes and the paths large inputs take (mutation testing showed them unchecked) ---------------


@pytest.mark.parametrize("settings", [{"exact_max": 1}, {"nlist": 0}, {"nprobe": 1}, {"reduce_dim": 0},
                                      {"margin": 0.0}, {"margin": 0.999}, {"index": "exact"}, {"index": "ivf"}])
def test_search_settings_at_their_limits_are_accepted(settings):
    SearchConfig(**settings).validate("dedup")


@pytest.mark.parametrize("settings,message", [
    ({"index": "hnsw"}, "dedup.index='hnsw' is not allowed; use one of auto, exact, ivf"),
    ({"exact_max": 0}, "dedup.exact_max=0 is not allowed; use a positive integer"),
    ({"nlist": -1}, "dedup.nlist=-1 is not allowed; use 0 (auto) or a positive integer"),
    ({"nprobe": 0}, "dedup.nprobe=0 is not allowed; use a positive integer"),
    ({"reduce_dim": -1}, "dedup.reduce_dim=-1 is not allowed; use 0 (no reduction) or a positive integer"),
    ({"margin": 1.0}, "dedup.margin=1.0 is not allowed; use a number in [0, 1)"),
    ({"margin": -0.01}, "dedup.margin=-0.01 is not allowed; use a number in [0, 1)")])
def test_bad_search_settings_name_the_key_the_value_and_the_fix(settings, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        SearchConfig(**settings).validate("dedup")


@pytest.mark.parametrize("index", ["exact", "ivf"])
def test_pairs_exactly_at_the_threshold_are_kept(index, caplog):
    """Cosines that float32 represents exactly: 0.5 between rows 0 and 1, 1.0 between the copies 2 and 3."""
    x = np.zeros((4, 8), np.float32)
    x[0, 0], x[1, :2], x[2:, 2] = 1.0, (0.5, np.sqrt(0.75)), 1.0
    cfg = SearchConfig(index=index, margin=0.05, reduce_dim=0)
    caplog.set_level(logging.INFO, logger="pas.curation.neighbors")
    half = similar_pairs(x, 0.5, cfg=cfg)
    assert index == "exact" or caplog.records[-1].getMessage().endswith(", 2 kept")
    assert as_set(half) == {(0, 1), (2, 3)} and half.method == index
    assert half.queries.dtype == half.base.dtype == np.int64 and half.similarity.dtype == np.float32
    assert sorted(half.similarity.tolist()) == [0.5, 1.0]
    copies = similar_pairs(x, 1.0, cfg=SearchConfig(index=index, margin=0.0, reduce_dim=0))   # no slack at all
    assert as_set(copies) == {(2, 3)} and copies.similarity.tolist() == [1.0]
    assert copies.best.dtype == np.float32 and copies.best.tolist()[2:] == [1.0, 1.0]


def test_exact_in_small_blocks_over_a_streamed_float16_base_matches_brute_force(monkeypatch):
    """The blocking of large inputs, forced on a small one: 9 query blocks x 3 base blocks (the self-join diagonal
    falls across blocks), a base too large to convert at once (converted block by block) and float16 storage."""
    from pas.curation import neighbors

    monkeypatch.setattr(neighbors, "_BLOCK", 300)
    monkeypatch.setattr(neighbors, "_CELLS", 300 * 1024)     # 1024 base rows per product
    monkeypatch.setattr(neighbors, "_RESIDENT", 0)
    x, planted = clustered(2600, planted=80, seed=3)
    x16 = x.astype(np.float16)
    found = similar_pairs(x16, 0.95, cfg=SearchConfig(index="exact"))
    sims = x16.astype(np.float64) @ x16.astype(np.float64).T  # float16 values, exact products
    np.fill_diagonal(sims, -1)
    i, j = np.nonzero(np.triu(sims >= 0.95, 1))
    assert as_set(found) == set(zip(i.tolist(), j.tolist())) >= planted
    assert found.best.dtype == found.similarity.dtype == np.float32
    assert np.allclose(found.best, sims.max(axis=1), atol=1e-5)
    assert np.allclose(found.similarity, sims[found.queries, found.base], atol=1e-5)
    queries = x16[:5]                                          # a cross join through the same blocks
    cross = similar_pairs(x16, 0.95, queries=queries, cfg=SearchConfig(index="exact"))
    q, b = np.nonzero(queries.astype(np.float64) @ x16.astype(np.float64).T >= 0.95)
    assert as_set(cross) == set(zip(q.tolist(), b.tolist())) and np.allclose(cross.best, 1.0, atol=1e-3)


def best_agrees_with(found, exact):
    """IVF's `best`: the best verified candidate, so at least every reported pair, at most the nearest neighbour."""
    assert found.best.dtype == np.float32
    finite = np.isfinite(found.best)
    assert np.all(found.best[finite] <= exact.best[finite] + 1e-6)
    assert np.all(found.best[found.queries] >= found.similarity - 1e-6)
    return finite


def test_ivf_best_and_pairs_of_a_self_join():
    x, planted = clustered(3000, planted=100, seed=4)
    exact = similar_pairs(x, 0.95, cfg=SearchConfig(index="exact"))
    ivf = similar_pairs(x, 0.95, cfg=SearchConfig(index="ivf", nlist=16, nprobe=4, reduce_dim=32))
    finite = best_agrees_with(ivf, exact)
    assert np.all(ivf.best[ivf.base] >= ivf.similarity - 1e-6)             # the larger index of a pair too
    paired = np.unique(np.concatenate([ivf.queries, ivf.base]))
    assert finite[paired].all() and np.allclose(ivf.best[paired], exact.best[paired], atol=1e-6)
    assert ivf.similarity.dtype == np.float32 and as_set(ivf) >= planted


def test_ivf_cross_join_reports_best_per_query():
    x, _ = clustered(4000, planted=0, seed=1)
    queries = x[:300] + np.random.default_rng(2).standard_normal((300, x.shape[1])).astype(np.float32) * 0.02
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = similar_pairs(x[:3000], 0.9, queries=queries, cfg=SearchConfig(index="exact"))
    ivf = similar_pairs(x[:3000], 0.9, queries=queries, cfg=SearchConfig(index="ivf", nlist=16, nprobe=4))
    assert ivf.best.shape == (300,) and exact.best.shape == (300,)
    finite = best_agrees_with(ivf, exact)
    assert finite.all() and np.allclose(ivf.best, exact.best, atol=1e-6)   # each query's copy is found


def test_ivf_is_reproducible_for_a_seed_and_the_seed_reaches_the_clustering():
    """1200 rows, 32 lists: the k-means sample is every row, so only the seed of k-means itself differs."""
    x, _ = clustered(1200, planted=40, seed=6)
    cfg = SearchConfig(index="ivf", nlist=32, nprobe=1, reduce_dim=16, margin=0.2)
    first, again, other = (similar_pairs(x, 0.9, cfg=cfg, seed=s) for s in (0, 0, 1))
    default = similar_pairs(x, 0.9, cfg=cfg)
    for same in (again, default):                                            # the default seed is 0
        assert as_set(same) == as_set(first) and np.array_equal(same.best, first.best, equal_nan=True)
    assert not np.array_equal(other.best, first.best, equal_nan=True)         # other lists: other candidates


@pytest.mark.parametrize("seed", range(5))
def test_ivf_searches_a_list_with_one_member_asked_by_one_query(seed):
    """A base row alone in its direction gets a list of its own for most k-means seeds; its near-copy, the only
    query, must be compared with it (and with nothing else)."""
    rng = np.random.default_rng(0)
    base = [np.eye(8)[0]] + [np.eye(8)[g] + 0.05 * rng.standard_normal((size, 8)) for g, size in
                             ((1, 7), (2, 12), (3, 20))]
    base = np.vstack(base).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    query = (np.eye(8)[:1] + 0.01 * rng.standard_normal((1, 8))).astype(np.float32)
    query /= np.linalg.norm(query)
    found = similar_pairs(base, 0.9, queries=query, cfg=SearchConfig(index="ivf", nlist=4, nprobe=1, reduce_dim=0),
                          seed=seed)
    assert as_set(found) == {(0, 0)} and found.best.tolist() == pytest.approx([float(query[0] @ base[0])])


def test_ivf_over_exact_copies_with_fewer_distinct_vectors_than_lists_finds_every_pair():
    """Two distinct vectors, 12 copies each, 3 lists: one list stays empty, yet the queries probe it."""
    base = np.repeat(np.eye(8, dtype=np.float32)[:2], 12, axis=0)
    cfg = SearchConfig(index="ivf", nlist=3, nprobe=3, reduce_dim=0)
    found = similar_pairs(base, 0.99, cfg=cfg)
    i, j = np.triu_indices(24, 1)
    assert as_set(found) == {(a, b) for a, b in zip(i.tolist(), j.tolist()) if (a < 12) == (b < 12)}
    cross = similar_pairs(base, 0.99, queries=base[[0, 23]], cfg=cfg)
    assert as_set(cross) == {(0, b) for b in range(12)} | {(1, b) for b in range(12, 24)}


@pytest.mark.parametrize("n,nlist,lists", [(2000, 0, 64), (40, 32, 5), (10, 4, 1), (200, 1, 1)])
def test_ivf_list_count_is_logged_auto_and_capped(caplog, n, nlist, lists):
    """0: a power of two near 2 sqrt(N) (2 sqrt(2000) = 89 -> 64); never more than N // 8 lists, at least 1."""
    caplog.set_level(logging.INFO, logger="pas.curation.neighbors")
    x, _ = clustered(n, planted=min(5, n // 2), seed=7)
    found = similar_pairs(x, 0.95, cfg=SearchConfig(index="ivf", nlist=nlist, nprobe=8, reduce_dim=0))
    first, second = (record.getMessage() for record in caplog.records if record.name == "pas.curation.neighbors")
    assert first == f"pairs >= 0.950 among {n} x {n} vectors by ivf search"
    assert re.fullmatch(rf"ivf: {lists} lists, nprobe {min(8, lists)}, \d+ candidate pairs verified, "
                        rf"{len(found.queries)} kept", second)


def test_ivf_beyond_one_chunk_of_65536_rows_finds_pairs_on_both_sides_of_the_chunk_edge():
    """PCA projection and list assignment run in chunks of 65536 rows: rows past the first chunk are searched too."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((66_000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pairs = [(10, 65_536), (65_535, 65_537), (100, 65_999)]
    for a, b in pairs:
        x[b] = x[a] + 0.02 * rng.standard_normal(32).astype(np.float32)
        x[b] /= np.linalg.norm(x[b])
    found = similar_pairs(x, 0.98, cfg=SearchConfig(index="ivf", nprobe=4, reduce_dim=16))
    assert as_set(found) == set(pairs)
