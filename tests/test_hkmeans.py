"""balance=hkmeans: hierarchical k-means and `r` sampling down the tree (pas.curation.hkmeans)."""
import numpy as np
import pytest

from pas.core.config import ConfigError, DataError, build
from pas.curation.balance import BALANCERS, BalanceOptions
from pas.curation.decontam import Contamination
from pas.curation.dedup import DedupConfig, curate
from pas.curation.hkmeans import HKMeansConfig, hkmeans_sample, plan, split_quota


def blobs(sizes, dim=16, spread=0.05, seed=0):
    """Well-separated Gaussian blobs of the given sizes; (points, blob of each point)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((len(sizes), dim))
    x = np.concatenate([c + spread * rng.standard_normal((n, dim)) for c, n in zip(centers, sizes)])
    return x.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


LONG_TAIL = [1000, 300, 100, 30, 10]


def test_defaults_reproduce_the_official_two_level_config():
    """configs/2levels_random_embeddings.yaml: 100k points, target 20000 -> 5000 and 1000 clusters, samples 10 and 3."""
    full = plan(20_000, 100_000, HKMeansConfig())
    assert (full.clusters, full.sample_sizes, full.resamples) == ((5000, 1000), (10, 3), (0, 10))
    assert plan(300, 40, HKMeansConfig()).clusters == (40, 15)   # capped at the points there are


@pytest.mark.parametrize("size", [1, 37, 50, 1439, 1440])
def test_exactly_size_distinct_indices(size):
    x, _ = blobs(LONG_TAIL)
    picked, labels = hkmeans_sample(x, size, HKMeansConfig(iters=10), seed=3)
    assert len(picked) == size == len(np.unique(picked))
    assert picked.min() >= 0 and picked.max() < len(x) and np.all(np.diff(picked) > 0)
    assert labels.shape == (len(x),) and labels.min() >= 0


def test_same_seed_same_sample_other_seed_other_sample():
    x, _ = blobs(LONG_TAIL)
    first = hkmeans_sample(x, 60, HKMeansConfig(iters=10), seed=7)
    again = hkmeans_sample(x, 60, HKMeansConfig(iters=10), seed=7)
    other = hkmeans_sample(x, 60, HKMeansConfig(iters=10), seed=8)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_rare_blobs_are_covered_and_the_head_is_flattened():
    x, blob = blobs(LONG_TAIL)
    picked, _ = hkmeans_sample(x, 50, HKMeansConfig(iters=20), seed=0)
    counts = np.bincount(blob[picked], minlength=len(LONG_TAIL))
    assert np.all(counts >= 2), counts  # a random 50 expects 1.0 of the 30-point blob and 0.35 of the 10-point one
    assert counts[0] <= 20, counts              # the head (69% of the points) gives well under its share


def test_split_quota_takes_the_best_cut_and_gives_the_rest_to_big_clusters():
    """hierarchical_sampling.py find_subcluster_target_size: sizes 10, 1, 5 and 8 to take -> cut 3, one +1."""
    quota = split_quota(np.array([10, 1, 5]), 8, np.random.default_rng(0))
    assert quota.sum() == 8 and quota[1] == 1 and sorted(quota[[0, 2]].tolist()) == [3, 4]
    assert split_quota(np.array([2, 3]), 9, np.random.default_rng(0)).tolist() == [2, 3]   # short: all of them


@pytest.mark.parametrize(("params", "key"), [
    ({"hkmeans_levels": 0}, "dedup.hkmeans_levels"),
    ({"hkmeans_clusters": [10]}, "dedup.hkmeans_clusters"),             # two levels, one count
    ({"hkmeans_clusters": [5, 10]}, "dedup.hkmeans_clusters"),          # grows upwards
    ({"hkmeans_sample_sizes": [0, 3]}, "dedup.hkmeans_sample_sizes"),
    ({"hkmeans_resamples": [1, 2, 3]}, "dedup.hkmeans_resamples"),
    ({"hkmeans_iters": 0}, "dedup.hkmeans_iters"),
    ({"hkmeans_clusters": "many"}, "dedup.hkmeans_clusters"),
    ({"balance": "hkmean"}, "dedup.balance"),
])
def test_bad_params_are_one_error_naming_the_key(params, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build(DedupConfig, params, "dedup")


def test_more_clusters_than_images_or_fewer_images_than_size_is_one_clear_error():
    x, _ = blobs([30, 10])
    with pytest.raises(ConfigError, match=r"dedup\.hkmeans_clusters\[0\]=100 is more than the 40 images"):
        hkmeans_sample(x, 20, HKMeansConfig(clusters=(100, 10)))
    with pytest.raises(DataError, match=r"only 40 images survived .* size=41"):
        hkmeans_sample(x, 41, HKMeansConfig())


def test_curate_with_hkmeans_gives_exactly_size_and_labels_every_survivor():
    x, blob = blobs(LONG_TAIL, dim=8)
    e = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(e)
    rows = [{"key": f"k{i:05d}", "shard": "s.tar", "source": "retrieved", "concept": "x", "domain_score": 0.0,
             "concept_score": 0.0, "pixel_hash": ""} for i in range(n)]
    clean = Contamination(["toy/test"], np.full(n, -1), np.full(n, -1), [""] * n, np.full(n, np.nan, np.float32),
                          np.full(n, np.nan, np.float32), {"toy/test": 0}, {"toy/test": 10})
    cfg = build(DedupConfig, {"balance": "hkmeans", "threshold": 0.99999, "hkmeans_iters": 10}, "dedup")
    result = curate(rows, e, [""] * n, clean, 40, ["x"], cfg, seed=1)
    assert len(result.curated) == 40 and result.metrics["balance"] == "hkmeans"
    assert sum(result.metrics["per_cluster"].values()) == 40
    picked = [int(r["key"][1:]) for r in result.curated]
    assert len(set(blob[picked].tolist())) == len(LONG_TAIL)


def test_every_balancer_is_registered_and_gives_exactly_size():
    x, _ = blobs([60, 20, 8], dim=8)
    e = x / np.linalg.norm(x, axis=1, keepdims=True)
    rows = [{"key": f"k{i:03d}", "domain_score": 0.0, "concept": "ab"[i % 2]} for i in range(len(e))]
    assert set(BALANCERS) == {"concepts", "clusters", "hkmeans"}
    for name, balancer in BALANCERS.items():
        picked, labels = balancer(rows, e, 25, ["a", "b"], BalanceOptions(hkmeans=HKMeansConfig(iters=5)), 0)
        assert len(picked) == 25 == len(set(picked)) and len(labels) == len(rows), name
