"""Shared fixtures: tiny models built once per session, small images made by the tests."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """models/generator and models/clip built through the models registry (tiny://)."""
    from pas.models.registry import resolve

    root = tmp_path_factory.mktemp("models")
    for role, name in (("generator", "tiny://sd"), ("clip", "tiny://clip")):
        resolve(role, name, root / role)
    return {"generator": root / "generator", "clip": root / "clip"}


def make_image(seed: int, size: int = 64, mode: str = "RGB") -> Image.Image:
    """A distinct random-shapes image for a seed."""
    rng = np.random.default_rng(seed)
    array = np.zeros((size, size, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
    for _ in range(4):
        x, y = rng.integers(0, size - 8, 2)
        w, h = rng.integers(4, size // 2, 2)
        array[y : y + h, x : x + w] = rng.integers(0, 255, 3, dtype=np.uint8)
    return Image.fromarray(array).convert(mode)


def write_image_shards(root: Path, shards: list[list[tuple[str, Image.Image]]], stem: str = "curated") -> list[dict]:
    """Write `<root>/curated/<stem>-NNNNNN.tar` shards of (key, image) JPEGs; one {key, shard} row per image."""
    from pas.core.shards import encode_jpeg, write_shard

    rows = []
    for index, images in enumerate(shards):
        shard = f"curated/{stem}-{index:06d}.tar"
        write_shard(root / shard, [(key, encode_jpeg(image), {}) for key, image in images])
        rows += [{"key": key, "shard": shard} for key, _ in images]
    return rows


@pytest.fixture
def image_factory():
    """Make distinct test images by seed."""
    return make_image


def pytest_collection_modifyitems(config, items):
    """Slow end-to-end tests first: under xdist one worker starts them at once while the other takes the rest."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
