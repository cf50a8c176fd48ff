"""Stream curated images from WebDataset tar shards as pairs of augmented views.

Each epoch visits every manifest key exactly once: shards in a seeded order, records in tar
order through a seeded shuffle buffer. Work is split over DDP ranks (by record, equal counts)
and DataLoader workers (by shard, or by record when there are fewer shards than workers).
A view's augmentation is seeded by (seed, epoch, key), so it does not depend on the split.
"""
from __future__ import annotations

import logging
import random
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms import v2

from pas.shards import decode_image

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ShardPlan = list[tuple[Path, frozenset[str]]]


def view_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """One SimCLR view: random resized crop, flip, colour jitter, grayscale, normalise -> (3, S, S)."""
    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(0.08, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def shard_plan(manifest: pa.Table, root: Path) -> ShardPlan:
    """Group the manifest's keys by shard (sorted by shard path), checking each shard exists."""
    missing = {"key", "shard"} - set(manifest.column_names)
    if missing:
        raise ValueError(f"manifest lacks column(s) {', '.join(sorted(missing))}")
    keys = manifest.column("key").to_pylist()
    groups: dict[str, set[str]] = {}
    for key, shard in zip(keys, manifest.column("shard").to_pylist()):
        groups.setdefault(shard, set()).add(key)
    if sum(len(g) for g in groups.values()) != len(keys) or len(set(keys)) != len(keys):
        raise ValueError("manifest lists a key more than once")
    plan = []
    for shard in sorted(groups):
        path = Path(root) / shard
        if not path.is_file():
            raise FileNotFoundError(f"shard {path} listed in the manifest does not exist")
        plan.append((path, frozenset(groups[shard])))
    return plan


def mix_seed(*values: int) -> int:
    """A well-mixed 32-bit seed from several integers."""
    return int(np.random.SeedSequence([v % 2**64 for v in values]).generate_state(1)[0])


def read_listed(path: Path, keys: frozenset[str]) -> Iterator[tuple[str, bytes]]:
    """Yield (key, jpeg bytes) in tar order for the listed keys; fail if one is missing."""
    found = set()
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if member.isfile() and ext == "jpg" and key in keys and key not in found:
                found.add(key)
                yield key, tar.extractfile(member).read()
    if len(found) != len(keys):
        absent = sorted(keys - found)
        raise ValueError(f"shard {path} lacks {len(absent)} manifest key(s), e.g. {absent[0]}.jpg")


def shuffled(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Shuffle a stream through a buffer of `size` items."""
    buffer: list[Any] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            i = rng.randrange(len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


class TwoViewStream(IterableDataset):
    """Yields {"key": str, "view1": (3, S, S), "view2": (3, S, S)} per manifest image per epoch."""

    def __init__(self, manifest: pa.Table, root: str | Path, image_size: int, seed: int,
                 shuffle_buffer: int = 1000) -> None:
        super().__init__()
        self.plan = shard_plan(manifest, Path(root))
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.transform = view_transform(image_size)
        self.epoch = 0
        self.rank, self.world = 0, 1
        log.info("streaming %d images from %d shards under %s", self.num_images, len(self.plan), root)

    @property
    def num_images(self) -> int:
        """Images in one epoch over all ranks."""
        return sum(len(keys) for _, keys in self.plan)

    def set_epoch(self, epoch: int) -> None:
        """Select the shard order, shuffle and augmentations of `epoch`."""
        self.epoch = epoch

    def set_rank(self, rank: int, world: int) -> None:
        """Read only this DDP rank's equal share of the records."""
        self.rank, self.world = rank, world

    def _records(self, rank: int, world: int, worker: int, workers: int) -> Iterator[tuple[str, bytes]]:
        order = list(range(len(self.plan)))
        random.Random(mix_seed(self.seed, self.epoch)).shuffle(order)
        limit = self.num_images // world * world           # equal counts per rank
        by_shard = len(order) >= workers
        offset = 0
        for position, index in enumerate(order):
            path, keys = self.plan[index]
            start, offset = offset, offset + len(keys)
            if by_shard and position % workers != worker:
                continue
            for j, record in enumerate(read_listed(path, keys)):
                g = start + j                                # index in this epoch's sequence
                if g >= limit or g % world != rank:
                    continue
                if not by_shard and (g // world) % workers != worker:
                    continue
                yield record

    def _views(self, key: str, jpeg: bytes) -> dict[str, Any]:
        try:
            image = decode_image(jpeg)
        except OSError as err:
            raise ValueError(f"cannot decode image {key}.jpg: {err}") from err
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, self.epoch, zlib.crc32(key.encode())))
            return {"key": key, "view1": self.transform(image), "view2": self.transform(image)}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = self.rank, self.world
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(mix_seed(self.seed, self.epoch, rank, worker))
        for key, jpeg in shuffled(self._records(rank, world, worker, workers), self.shuffle_buffer, rng):
            yield self._views(key, jpeg)


class StreamSync(L.Callback):
    """Give the stream its DDP rank at setup and its epoch at each epoch start.

    Loader iterators (and workers, which copy the stream) are created after these hooks.
    """

    def __init__(self, dataset: TwoViewStream) -> None:
        self.dataset = dataset

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.dataset.set_rank(trainer.global_rank, trainer.world_size)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.dataset.set_epoch(trainer.current_epoch)


def make_loader(dataset: TwoViewStream, batch_size: int, workers: int, pin_memory: bool = False) -> DataLoader:
    """Batches of full size only; fresh workers each epoch so they see the new epoch."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True,
                      pin_memory=pin_memory, persistent_workers=False)
