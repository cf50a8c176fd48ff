"""Pair search: exact and IVF agree on planted near-duplicates; IVF never reports a pair below the threshold."""
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


@pytest.mark.parametrize("key,value", [("index", "hnsw"), ("nprobe", 0), ("margin", 1.5), ("threshold", 0.0),
                                       ("balance", "random"), ("prefer_source", "web")])
def test_bad_dedup_params_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"dedup.{key}"):
        build(DedupConfig, {key: value}, "dedup")
