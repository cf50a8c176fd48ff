"""The offline default data, made only from images that ship inside registry packages.

- an unlabeled pool folder: animal-shape-mnist silhouettes (disjoint from the downstream
  split), scikit-image photos and faces, scikit-learn digits and sample photos;
- a labeled downstream set (animal-shape-mnist train/test) as HF-style parquet.
"""
from __future__ import annotations

import gzip
import io
import logging
import pickle
from dataclasses import dataclass
from importlib import util
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from pas.core.config import require
from pas.core.shards import write_table

log = logging.getLogger(__name__)

ANIMAL_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")


@dataclass(frozen=True)
class SampleDataConfig:
    """params.sample_data: how many packaged images go to the pool and the downstream splits."""

    pool_animals: int = 3000
    downstream_train: int = 1000
    downstream_test: int = 500
    image_size: int = 64
    seed: int = 0  # the split's own seed, so changing the run seed does not rebuild the data

    def validate(self, prefix: str) -> None:
        """The three animal-shape-mnist splits must fit in its 10,000 images."""
        total = self.pool_animals + self.downstream_train + self.downstream_test
        require(total <= 10_000, prefix, total, "pool_animals + downstream_train + downstream_test <= 10000")
        require(self.downstream_train > 0 and self.downstream_test > 0, prefix, total, "use positive split sizes")
        require(self.image_size >= 8, f"{prefix}.image_size", self.image_size, "use >= 8")


def load_animal_shapes() -> tuple[np.ndarray, np.ndarray]:
    """(10000, 28, 28) uint8 silhouettes and their labels, read from the package's files."""
    spec = util.find_spec("animal_shape_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package animal-shape-mnist is not installed; pip install animal-shape-mnist")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal Shape"
    with gzip.open(folder / "animal_data_version_3.gz") as handle:
        images = pickle.load(handle)
    with gzip.open(folder / "animal_label_version_3.gz") as handle:
        labels = pickle.load(handle)
    return np.asarray(images, np.uint8), np.asarray(labels, np.int64)


def _png(array: np.ndarray, size: int | None = None) -> bytes:
    image = Image.fromarray(array)
    if size:
        image = image.resize((size, size), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def packaged_photos() -> dict[str, np.ndarray]:
    """Photos and textures from scikit-image and scikit-learn (named arrays)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = {}
    for name in ("astronaut", "camera", "cat", "chelsea", "coffee", "coins", "horse", "hubble_deep_field",
                 "immunohistochemistry", "moon", "page", "rocket", "text", "brick", "grass", "gravel",
                 "retina", "clock", "colorwheel", "logo", "microaneurysms", "checkerboard"):
        photos[name] = np.asarray(getattr(skimage.data, name)())  # all ship inside scikit-image
    for i, image in enumerate(load_sample_images().images):
        photos[f"sklearn_sample_{i}"] = image
    return photos


def write_pool(folder: Path, animals: np.ndarray, cfg: SampleDataConfig) -> dict[str, int]:
    """Write the unlabeled pool as image files in sub-folders; return counts per kind."""
    import skimage.data
    from sklearn.datasets import load_digits

    counts: dict[str, int] = {}

    def put(kind: str, name: str, data: bytes) -> None:
        (folder / kind).mkdir(parents=True, exist_ok=True)
        (folder / kind / f"{name}.png").write_bytes(data)
        counts[kind] = counts.get(kind, 0) + 1

    for i, array in enumerate(animals):
        put("animals", f"animal_{i:05d}", _png(array, cfg.image_size))
    for name, array in packaged_photos().items():
        put("photos", name, _png(array.astype(np.uint8) if array.dtype != np.uint8 else array))
    faces = skimage.data.lfw_subset()
    for i, array in enumerate(faces):
        put("faces", f"lfw_{i:03d}", _png((np.clip(array, 0, 1) * 255).astype(np.uint8), cfg.image_size))
    for i, array in enumerate(load_digits().images):
        put("digits", f"digit_{i:04d}", _png((array * 255 / 16).astype(np.uint8)))
    return counts


def downstream_table(images: np.ndarray, labels: np.ndarray, size: int) -> pa.Table:
    """HF-style table: image (PNG bytes), label (int64), label_name (string)."""
    return pa.table({
        "image": pa.array([_png(a, size) for a in images], pa.binary()),
        "label": pa.array(labels, pa.int64()),
        "label_name": pa.array([ANIMAL_CLASSES[i] for i in labels], pa.string()),
    })


def build_sample_data(pool_dir: Path, downstream_dir: Path, cfg: SampleDataConfig) -> dict[str, int]:
    """Write the pool folder and downstream/animal_shapes/{train,test}.parquet."""
    images, labels = load_animal_shapes()
    order = np.random.default_rng(cfg.seed).permutation(len(images))
    train = order[: cfg.downstream_train]
    test = order[cfg.downstream_train : cfg.downstream_train + cfg.downstream_test]
    pool = order[cfg.downstream_train + cfg.downstream_test :][: cfg.pool_animals]
    counts = {f"pool_{k}": v for k, v in write_pool(pool_dir, images[pool], cfg).items()}
    target = downstream_dir / "animal_shapes"
    write_table(downstream_table(images[train], labels[train], cfg.image_size), target / "train.parquet")
    write_table(downstream_table(images[test], labels[test], cfg.image_size), target / "test.parquet")
    counts.update(downstream_train=len(train), downstream_test=len(test))
    log.info("sample data: %s", counts)
    return counts
