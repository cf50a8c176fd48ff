"""Batches of prompt groups for multi-positive pretraining (StableRep): m views per group, a label per group.

A group is m images generated from one prompt (the curated manifest's `prompt` of its `generated` rows), one view
each, or, for an image without prompt siblings (retrieved, or a prompt left with one image), m views of that image.
Each epoch every manifest key lands in exactly one group: a prompt's images are shuffled and cut into groups of m,
a last group with fewer than m images takes further views of its own images in turn. The official sampler draws
`--n_img` of each caption's images per item (google-research/syn-rep-learn StableRep/dataset/data.py,
SupconDataset.__getitem__, lines 70-90: one item per caption, its images from --n_img of the 10 image folders);
cutting a prompt into several groups keeps every image once an epoch when prompts have many images.

The groups are shuffled by (seed, epoch) and dealt to DDP ranks whole (equal counts, as pas.ssl.data.ViewStream
deals records) and to DataLoader workers in turn; a view's draw is seeded by (seed, epoch, key) as in ViewStream.
A group's label is its prompt's index (a lone image's: one of its own), so two groups of one prompt in a batch are
positives of each other. Images are read from tar shards by seeking to their members (an index of the shards'
headers is built once), since a prompt's images lie in different shards.
"""
from __future__ import annotations

import logging
import random
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from torch.utils.data import IterableDataset, get_worker_info

from pas.ssl.augment import cpu_views
from pas.ssl.data import mix_seed, round_robin_skips, shard_plan
from pas.ssl.views import ViewSpec

log = logging.getLogger(__name__)

Pool = tuple[int, tuple[str, ...]]      # (label, keys that may share a group)
Group = tuple[int, tuple[str, ...]]     # (label, the m keys of its views, in view order; repeats allowed)


def prompt_pools(manifest: pa.Table) -> list[Pool]:
    """(label, keys) per prompt of the generated rows (labels 0.. in prompt order), then one per other image
    (sorted by key): the images that may share a group. Without `prompt` and `source` columns every image is alone."""
    keys = manifest.column("key").to_pylist()
    names = set(manifest.column_names)
    prompts = manifest.column("prompt").to_pylist() if "prompt" in names else [None] * len(keys)
    sources = manifest.column("source").to_pylist() if "source" in names else [None] * len(keys)
    by_prompt: dict[str, list[str]] = {}
    alone = []
    for key, prompt, source in zip(keys, prompts, sources):
        if source == "generated" and prompt:
            by_prompt.setdefault(prompt, []).append(key)
        else:
            alone.append(key)
    pools = [tuple(sorted(by_prompt[prompt])) for prompt in sorted(by_prompt)]
    pools += [(key,) for key in sorted(alone)]
    return list(enumerate(pools))


def has_siblings(manifest: pa.Table) -> bool:
    """Whether any two images of the manifest were generated from one prompt."""
    return any(len(keys) > 1 for _, keys in prompt_pools(manifest))


def group_count(pools: list[Pool], m: int) -> int:
    """Groups of one epoch: ceil(images / m) per pool (the same every epoch)."""
    return sum(-(-len(keys) // m) for _, keys in pools)


def epoch_groups(pools: list[Pool], m: int, seed: int, epoch: int) -> list[Group]:
    """Every pool's keys shuffled and cut into groups of m (a short last group cycles its keys for more views), all
    groups shuffled: deterministic for (seed, epoch)."""
    rng = random.Random(mix_seed(seed, epoch))
    groups = []
    for label, keys in pools:
        order = list(keys)
        rng.shuffle(order)
        for start in range(0, len(order), m):
            chunk = order[start:start + m]
            groups.append((label, tuple(chunk[i % len(chunk)] for i in range(m))))
    rng.shuffle(groups)
    return groups


def tar_index(path: Path) -> dict[str, tuple[int, int]]:
    """Image key -> (data offset, size) of every image member of an uncompressed tar shard (the first per key)."""
    from pas.ssl.datasets import tar_image_key

    index: dict[str, tuple[int, int]] = {}
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            key = tar_image_key(member)
            if key is not None and key not in index:
                index[key] = (member.offset_data, member.size)
    return index


class GroupStream(IterableDataset):
    """Yields {"key": first key, "views": [m (3, S, S)], "label": int} per group per epoch (`transforms`: m
    ViewSpecs, view j of a group drawn by transforms[j] from its j-th key)."""

    def __init__(self, manifest: pa.Table, root: str | Path, transforms: list[ViewSpec], seed: int,
                 normalize: bool = True) -> None:
        super().__init__()
        if not all(isinstance(t, ViewSpec) for t in transforms) or len(transforms) < 2:
            raise ValueError("GroupStream needs two or more ViewSpec views (pas.ssl.views), one per group member")
        self.plan = shard_plan(manifest, Path(root))
        self.transforms, self.m = list(transforms), len(transforms)
        self.seed, self.normalize = seed, normalize
        self.pools = prompt_pools(manifest)
        self.location: dict[str, tuple[int, int, int]] = {}    # key -> (plan index, data offset, size)
        for index, (path, keys) in enumerate(self.plan):
            if path.is_dir() or path.suffix != ".tar":
                raise ValueError(f"prompt groups read images by seeking in tar shards; {path} is not one (pretrain "
                                 "on the curated dataset, or use another method for this one)")
            found = tar_index(path)
            absent = sorted(keys - found.keys())
            if absent:
                raise ValueError(f"shard {path} lacks {len(absent)} manifest key(s), e.g. {absent[0]}.jpg")
            self.location.update({key: (index, *found[key]) for key in keys})
        self.epoch, self.rank, self.world = 0, 0, 1
        self.resume_batches, self.batch_size = 0, 1
        log.info("prompt groups of %d views: %d groups from %d images (%d prompts with siblings) in %d shards",
                 self.m, self.num_images, len(self.location), sum(len(k) > 1 for _, k in self.pools), len(self.plan))

    @property
    def num_images(self) -> int:
        """Groups in one epoch over all ranks (the stream's items; each is m views)."""
        return group_count(self.pools, self.m)

    def set_epoch(self, epoch: int) -> None:
        """Select the groups, their order and augmentations of `epoch`, from its start."""
        self.epoch, self.resume_batches = epoch, 0

    def set_rank(self, rank: int, world: int) -> None:
        """Take only this DDP rank's equal share of the groups."""
        self.rank, self.world = rank, world

    def resume(self, batches: int, batch_size: int) -> None:
        """Start the current epoch after the first `batches` loader batches of `batch_size` (already trained on)."""
        self.resume_batches, self.batch_size = batches, batch_size

    def rank_groups(self) -> list[Group]:
        """This rank's groups of the epoch, in order: group g of the shuffled epoch goes to rank g % world."""
        groups = epoch_groups(self.pools, self.m, self.seed, self.epoch)
        whole = len(groups) // self.world * self.world                     # equal counts per rank
        return groups[self.rank:whole:self.world]

    def _read(self, key: str) -> bytes:
        index, offset, size = self.location[key]
        with open(self.plan[index][0], "rb") as f:
            f.seek(offset)
            return f.read(size)

    def _item(self, label: int, keys: tuple[str, ...]) -> dict[str, Any]:
        """The group's views: each distinct key decoded once, its views drawn from a generator seeded by its key."""
        views: list[Any] = [None] * self.m
        for key in dict.fromkeys(keys):
            positions = [j for j, k in enumerate(keys) if k == key]
            rng = random.Random(mix_seed(self.seed, self.epoch, zlib.crc32(key.encode())))
            try:
                drawn = cpu_views(self._read(key), [self.transforms[j] for j in positions], rng, self.normalize)
            except OSError as err:
                raise ValueError(f"cannot decode image {key}.jpg: {err}") from err
            for j, view in zip(positions, drawn):
                views[j] = view
        return {"key": keys[0], "views": views, "label": label}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        mine = self.rank_groups()
        rotation, skip = 0, 0
        if self.resume_batches:
            counts = [len(mine[w::workers]) // self.batch_size for w in range(workers)]
            taken, rotation = round_robin_skips(counts, self.resume_batches)
            skip = taken[(worker + rotation) % workers] * self.batch_size
        role = (worker + rotation) % workers                # the worker whose groups this one delivers
        for label, keys in mine[role::workers][skip:]:
            yield self._item(label, keys)
