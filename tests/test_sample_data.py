import numpy as np
import pyarrow.parquet as pq
import pytest

from pas.core.config import ConfigError, build
from pas.data.sample_data import ANIMAL_CLASSES, SampleDataConfig, build_sample_data, load_animal_shapes


def test_animal_shapes_ship_in_the_package():
    images, labels = load_animal_shapes()
    assert images.shape == (10_000, 28, 28) and set(np.unique(labels)) == set(range(len(ANIMAL_CLASSES)))


def test_pool_and_downstream_are_written_and_disjoint(tmp_path):
    cfg = SampleDataConfig(pool_animals=50, downstream_train=40, downstream_test=20, image_size=32)
    counts = build_sample_data(tmp_path / "pool", tmp_path / "down", cfg)
    assert counts["pool_animals"] == 50 and counts["pool_faces"] == 200 and counts["pool_photos"] >= 10
    assert len(list((tmp_path / "pool").rglob("*.png"))) == sum(v for k, v in counts.items() if k.startswith("pool_"))
    train = pq.read_table(tmp_path / "down/animal_shapes/train.parquet")
    test = pq.read_table(tmp_path / "down/animal_shapes/test.parquet")
    assert train.num_rows == 40 and test.num_rows == 20
    assert train.column_names == ["image", "label", "label_name"]
    pool_bytes = {p.read_bytes() for p in (tmp_path / "pool/animals").iterdir()}
    eval_bytes = set(train.column("image").to_pylist()) | set(test.column("image").to_pylist())
    assert not pool_bytes & eval_bytes  # the pool never holds an evaluation image


def test_split_sizes_must_fit_the_package():
    with pytest.raises(ConfigError, match="sample_data"):
        build(SampleDataConfig, {"pool_animals": 9000, "downstream_train": 2000}, "sample_data")
