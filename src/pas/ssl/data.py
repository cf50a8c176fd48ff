"""Stream curated images from WebDataset tar shards as lists of augmented views (one per method view).

Each epoch visits every manifest key exactly once: shards in a seeded order, records in tar
order through a seeded shuffle buffer. Work is split over DDP ranks (by record, equal counts)
and DataLoader workers (by shard, or by record when there are fewer shards than workers).
A view's augmentation is seeded by (seed, epoch, key), so it does not depend on the split.
A run resumed mid-epoch skips, undecoded, exactly the records of the batches already trained on.
A rank (and a worker) reads the bytes of its own tar members only: the others' are seeked over.

With ViewSpec views (pas.ssl.views) a record is decoded once by OpenCV, at the smallest JPEG scale its crops
allow, and augmented with OpenCV on uint8 (pas.ssl.augment), or, with `encoded=True`, yielded as its bytes and the views' draws
for the device to decode and augment (pas.ssl.gpu_augment).
"""
from __future__ import annotations

import io
import logging
import random
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pas.core.shards import decode_image
from pas.ssl.augment import cpu_views
from pas.ssl.views import ViewSpec, sample_views

log = logging.getLogger(__name__)

ShardPlan = list[tuple[Path, frozenset[str]]]
Transform = Callable[[Image.Image], torch.Tensor]
Keep = Callable[[int], bool]


def shard_plan(manifest: pa.Table, root: Path) -> ShardPlan:
    """Group the manifest's keys by shard (sorted by shard path), checking each shard exists."""
    missing = {"key", "shard"} - set(manifest.column_names)
    if missing:
        raise ValueError(f"manifest lacks column(s) {', '.join(sorted(missing))}")
    keys = manifest.column("key").to_pylist()
    groups: dict[str, set[str]] = {}
    for key, shard in zip(keys, manifest.column("shard").to_pylist()):
        groups.setdefault(shard, set()).add(key)
    if len(set(keys)) != len(keys):
        twice = next(key for key, count in Counter(keys).items() if count > 1)
        raise ValueError(f"manifest lists key {twice!r} more than once")
    plan = []
    for shard in sorted(groups):
        path = Path(root) / shard
        if not path.exists():
            raise FileNotFoundError(f"shard {path} listed in the manifest does not exist")
        plan.append((path, frozenset(groups[shard])))
    return plan


def mix_seed(*values: int) -> int:
    """A well-mixed 32-bit seed from several integers."""
    return int(np.random.SeedSequence([v % 2**64 for v in values]).generate_state(1)[0])


def read_records(path: Path, keys: frozenset[str], keep: Keep | None = None) -> Iterator[tuple[str, bytes | None]]:
    """Yield (key, encoded image) of the listed keys from a tar shard, a parquet file or an image folder, in the
    source's order; with `keep`, the bytes of the j-th listed record only where keep(j) (None otherwise)."""
    from pas.ssl.datasets import read_folder_images, read_parquet_rows

    if path.is_dir():
        records = read_folder_images(path, keys)
    elif path.suffix == ".parquet":
        records = read_parquet_rows(path, keys)
    else:
        return read_listed(path, keys, keep)
    return ((key, data if keep is None or keep(j) else None) for j, (key, data) in enumerate(records))


def read_listed(path: Path, keys: frozenset[str], keep: Keep | None = None) -> Iterator[tuple[str, bytes | None]]:
    """Yield (key, image bytes) in tar order for the listed keys, the bytes only of the j-th where keep(j) (the
    others' data is seeked over, never read); fail if one is missing."""
    from pas.ssl.datasets import tar_image_key

    found = set()
    with tarfile.open(path, mode="r:*") as tar:     # random access: an unread member's data is skipped by seek
        for member in tar:
            key = tar_image_key(member)
            if key in keys and key not in found:
                wanted = keep is None or keep(len(found))
                found.add(key)
                yield key, tar.extractfile(member).read() if wanted else None
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


def round_robin_skips(batches_per_worker: list[int], done: int) -> tuple[list[int], int]:
    """Batches each DataLoader worker made among the loader's first `done`, and the worker due next.

    A DataLoader takes batches from its workers in turn (0, 1, ..., W-1, 0, ...), passing over a
    worker once it has run out.
    """
    taken = [0] * len(batches_per_worker)
    following = 0
    while done > 0 and any(t < b for t, b in zip(taken, batches_per_worker)):
        for w, available in enumerate(batches_per_worker):
            if done > 0 and taken[w] < available:
                taken[w] += 1
                done -= 1
                following = (w + 1) % len(batches_per_worker)
    return taken, following


class ViewStream(IterableDataset):
    """Yields {"key": str, "views": [(3, S_v, S_v) per transform]} per manifest image per epoch."""

    def __init__(self, manifest: pa.Table, root: str | Path, transforms: list[Transform], seed: int,
                 shuffle_buffer: int = 1000, normalize: bool = True, encoded: bool = False) -> None:
        """`transforms`: ViewSpecs (one draw per record, drafted decode) or any callables on a PIL image.
        `normalize=False`: ViewSpec views stay uint8 (the device normalises them). `encoded=True`: yield the
        record's bytes and draws ({"key", "encoded", "params" (V, PARAMS)}) for pas.ssl.gpu_augment."""
        super().__init__()
        self.plan = shard_plan(manifest, Path(root))
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.transforms = list(transforms)
        self.specs = self.transforms if all(isinstance(t, ViewSpec) for t in self.transforms) else None
        if encoded and self.specs is None:
            raise ValueError("encoded=True needs ViewSpec views (pas.ssl.views), not arbitrary transforms")
        self.normalize, self.encoded = normalize, encoded
        self.epoch = 0
        self.rank, self.world = 0, 1
        self.resume_batches, self.batch_size = 0, 1
        log.info("streaming %d images from %d shards under %s", self.num_images, len(self.plan), root)

    @property
    def num_images(self) -> int:
        """Images in one epoch over all ranks."""
        return sum(len(keys) for _, keys in self.plan)

    def set_epoch(self, epoch: int) -> None:
        """Select the shard order, shuffle and augmentations of `epoch`, from its start."""
        self.epoch = epoch
        self.resume_batches = 0

    def set_rank(self, rank: int, world: int) -> None:
        """Read only this DDP rank's equal share of the records."""
        self.rank, self.world = rank, world

    def resume(self, batches: int, batch_size: int) -> None:
        """Start the current epoch after the first `batches` loader batches of `batch_size` (already trained on)."""
        self.resume_batches, self.batch_size = batches, batch_size

    def _shards(self, worker: int, workers: int) -> Iterator[tuple[int, int]]:
        """(plan index, position of its first record in this epoch's sequence) of the shards `worker` reads."""
        order = list(range(len(self.plan)))
        random.Random(mix_seed(self.seed, self.epoch)).shuffle(order)
        by_shard = len(order) >= workers
        offset = 0
        for position, index in enumerate(order):
            start, offset = offset, offset + len(self.plan[index][1])
            if not by_shard or position % workers == worker:
                yield index, start

    def _keep(self, g: int, rank: int, world: int, worker: int, workers: int) -> bool:
        """Whether record g of the epoch's sequence belongs to this rank and worker."""
        if g >= self.num_images // world * world or g % world != rank:    # equal counts per rank
            return False
        return len(self.plan) >= workers or (g // world) % workers == worker

    def _records(self, rank: int, world: int, worker: int, workers: int) -> Iterator[tuple[str, bytes]]:
        for index, start in self._shards(worker, workers):
            path, keys = self.plan[index]
            def keep(j: int, start: int = start) -> bool:
                return self._keep(start + j, rank, world, worker, workers)

            for key, data in read_records(path, keys, keep):
                if data is not None:
                    yield key, data

    def _resume_plan(self, rank: int, world: int, workers: int) -> tuple[list[int], int]:
        """Records each worker delivered in the batches trained on before a resume, and the rotation
        that makes the restarted loader (which begins at worker 0) continue the interrupted order."""
        if not self.resume_batches:
            return [0] * workers, 0
        counts = [sum(self._keep(start + j, rank, world, w, workers)
                      for index, start in self._shards(w, workers) for j in range(len(self.plan[index][1])))
                  for w in range(workers)]
        taken, following = round_robin_skips([c // self.batch_size for c in counts], self.resume_batches)
        return [t * self.batch_size for t in taken], following

    def _views(self, key: str, jpeg: bytes) -> dict[str, Any]:
        if self.specs is not None:
            rng = random.Random(mix_seed(self.seed, self.epoch, zlib.crc32(key.encode())))
            try:
                if self.encoded:
                    with Image.open(io.BytesIO(jpeg)) as image:     # the header only: its size
                        params = sample_views(self.specs, image.width, image.height, rng)
                    return {"key": key, "encoded": jpeg, "params": torch.tensor(params, dtype=torch.float32)}
                return {"key": key, "views": cpu_views(jpeg, self.specs, rng, self.normalize)}
            except OSError as err:
                raise ValueError(f"cannot decode image {key}.jpg: {err}") from err
        try:
            image = decode_image(jpeg)
        except OSError as err:
            raise ValueError(f"cannot decode image {key}.jpg: {err}") from err
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, self.epoch, zlib.crc32(key.encode())))
            return {"key": key, "views": [transform(image) for transform in self.transforms]}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world = self.rank, self.world
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        skips, rotation = self._resume_plan(rank, world, workers)
        role = (worker + rotation) % workers                # the worker whose records this one delivers
        rng = random.Random(mix_seed(self.seed, self.epoch, rank, role))
        records = shuffled(self._records(rank, world, role, workers), self.shuffle_buffer, rng)
        for i, (key, jpeg) in enumerate(records):
            if i >= skips[role]:
                yield self._views(key, jpeg)


class StreamSync(L.Callback):
    """Give the stream its DDP rank at setup and its epoch at each epoch start; resume it mid-epoch.

    Loader iterators (and workers, which copy the stream) are created after these hooks. The
    callback's state (epoch, batches trained this epoch) goes into Lightning checkpoints, so a
    resumed run continues the interrupted epoch with the very batches it had not trained on.
    """

    def __init__(self, dataset: ViewStream, batch_size: int) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.batches = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.dataset.set_rank(trainer.global_rank, trainer.world_size)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.dataset.set_epoch(trainer.current_epoch)
        self.batches = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.batches += 1

    def state_dict(self) -> dict[str, int]:
        """Epoch and batches trained in it."""
        return {"epoch": self.dataset.epoch, "batches": self.batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continue `epoch` after its first `batches` batches."""
        self.dataset.set_epoch(state_dict["epoch"])
        self.dataset.resume(state_dict["batches"], self.batch_size)
        self.batches = state_dict["batches"]


def one_thread_per_worker(worker_id: int) -> None:
    """A DataLoader worker augments on one core: OpenCV's own thread pool off, as torch already is in workers."""
    import cv2

    cv2.setNumThreads(1)


def make_loader(dataset: ViewStream, batch_size: int, workers: int, pin_memory: bool = False) -> DataLoader:
    """Batches of full size only; fresh workers each epoch so they see the new epoch; one thread per worker."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True,
                      pin_memory=pin_memory, persistent_workers=False,
                      worker_init_fn=one_thread_per_worker if workers else None)


def split_heldout(manifest: pa.Table, count: int, seed: int) -> tuple[pa.Table, pa.Table]:
    """(rows to train on, `count` rows held out): a seeded choice by key, so the same manifest and seed always hold
    out the same images, whatever order its rows come in."""
    keys = manifest.column("key").to_pylist()
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    chosen = set(random.Random(seed).sample(order, min(count, len(keys))))
    held = [i for i in range(len(keys)) if i in chosen]
    kept = [i for i in range(len(keys)) if i not in chosen]
    return manifest.take(kept), manifest.take(held)
