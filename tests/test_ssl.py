"""pas.ssl: NT-Xent, every registered method, timm backbones and the multi-view shard stream."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conftest import write_image_shards
from pas.core.config import ConfigError
from pas.ssl import METHODS, get_method, method_args
from pas.ssl.augment import simclr_view
from pas.ssl.backbones import create_backbone
from pas.ssl.base import Progress, SSLMethod
from pas.ssl.data import ViewStream, round_robin_skips
from pas.ssl.module import param_groups, warmup_cosine
from pas.ssl.simclr import nt_xent

TINY = "test_resnet"   # timm's 370k-parameter ResNet: a fast real backbone on the CPU
TINY_ARGS = {          # small heads and queues so every method trains in seconds (other keys: paper values)
    "simclr": {"proj_dim": 32},
    "nnclr": {"queue_size": 16, "proj_hidden_dim": 64, "proj_output_dim": 32, "pred_hidden_dim": 64},
    "barlow_twins": {"proj_hidden_dim": 64, "proj_output_dim": 64},
    "dino": {"out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32, "local_crops": 2, "local_crop_size": 16,
             "teacher_temp": 0.04, "warmup_teacher_temp_epochs": 0.0, "freeze_last_layer_epochs": 0.0,
             "base_momentum": 0.9},    # a teacher that follows the student within a few dozen steps
    "all4one": {"queue_size": 16, "proj_hidden_dim": 64, "proj_output_dim": 32, "pred_hidden_dim": 64},
    "swav": {"nmb_prototypes": 30, "feat_dim": 32, "hidden_mlp": 64, "local_crops": 2, "local_crop_size": 16,
             "freeze_prototypes_epochs": 0.0},
    "lejepa": {"proj_hidden_dim": 64, "num_slices": 64, "global_views": 2, "local_views": 2, "local_crop_size": 16},
    "stablerep": {"images_per_prompt": 2, "mlp_dim": 64, "proj_dim": 32},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster and does not fight the other jobs on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_args(name: str):
    """The method's Args with TINY_ARGS applied."""
    return method_args(name, TINY_ARGS.get(name), f"tests.{name}")


def build_method(name: str, **overrides) -> tuple[torch.nn.Module, SSLMethod]:
    """(tiny backbone, method `name` on it with tiny args + overrides)."""
    backbone, dim = create_backbone(TINY)
    args = method_args(name, {**TINY_ARGS.get(name, {}), **overrides}, f"tests.{name}")
    return backbone, get_method(name)(backbone, dim, args)


def train_steps(backbone: torch.nn.Module, method: SSLMethod, views: list[torch.Tensor], steps: int,
                lr: float = 1e-3) -> list[float]:
    """Optimise on fixed views, calling the method's hooks as PretrainModule does; the loss per step."""
    both = torch.nn.ModuleList([backbone, method])
    optimizer = torch.optim.AdamW(param_groups(both, 0.0, lr, method.lr_scales()), lr=lr)
    losses = []
    for step in range(steps):
        loss = method(backbone, views).loss
        optimizer.zero_grad()
        loss.backward()
        method.before_optimizer_step(Progress(step, steps, steps))
        if method.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(both.parameters(), method.grad_clip)
        optimizer.step()
        method.after_optimizer_step(backbone, Progress(step + 1, steps, steps))
        losses.append(loss.item())
    return losses


def make_image(rng: np.random.Generator, size: int = 40) -> Image.Image:
    """A noisy colour field with a rectangle: enough structure to tell images apart."""
    array = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 25, (size, size, 3)), 0, 255)
    y, x = rng.integers(0, size // 2, 2)
    array[y:y + size // 2, x:x + size // 2] = rng.integers(0, 256, 3)
    return Image.fromarray(array.astype(np.uint8))


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, Path]:
    """3 listed shards of 12 images (11 listed each) + an unlisted shard that is not a tar."""
    root = tmp_path_factory.mktemp("ssl-data")
    rng = np.random.default_rng(0)
    shards = [[(f"s{s}-{i:02d}", make_image(rng)) for i in range(12)] for s in range(3)]
    rows = [row for row in write_image_shards(root, shards, "c") if not row["key"].endswith("-00")]
    (root / "curated" / "c-000099.tar").write_bytes(b"not a tar: opening it would fail")
    return pa.Table.from_pylist(rows), root


def test_nt_xent_matches_hand_computed_value() -> None:
    """Orthogonal pairs, temperature 1: each row sees its partner at cos 1 and two others at 0."""
    z = torch.eye(2)
    expected = math.log(2 + math.e) - 1      # -log(e^1 / (e^0 + e^1 + e^0))
    assert nt_xent(z, z.clone(), temperature=1.0).item() == pytest.approx(expected, abs=1e-6)


def test_nt_xent_is_finite_and_prefers_matched_pairs() -> None:
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(16, 32, generator=gen)
    z2 = z1 + 0.1 * torch.randn(16, 32, generator=gen)
    matched = nt_xent(z1, z2, 0.2)
    shuffled = nt_xent(z1, z2[torch.randperm(16, generator=gen)], 0.2)
    assert torch.isfinite(matched) and torch.isfinite(shuffled)
    assert matched < shuffled


def test_get_method_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="simclr"):
        get_method("no-such-method")


def _views(name: str, shards: tuple[pa.Table, Path], count: int = 8) -> list[torch.Tensor]:
    """`count` real images of the shards, augmented with the method's own views at 32 px."""
    manifest, root = shards
    transforms = get_method(name).view_transforms(tiny_args(name), 32)
    items = [item for _, item in zip(range(count), ViewStream(manifest, root, transforms, seed=0))]
    return [torch.stack([item["views"][v] for item in items]) for v in range(len(transforms))]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_gradients_reach_backbone(name: str, shards: tuple[pa.Table, Path]) -> None:
    torch.manual_seed(0)
    backbone, method = build_method(name)
    out = method(backbone, _views(name, shards, 4))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.embedding.ndim == 2 and out.embedding.shape[0] == 4 and not out.embedding.requires_grad
    assert all(math.isfinite(float(v)) for v in out.logs.values())
    out.loss.backward()
    grads = [p.grad for p in backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert grads[0].abs().sum() > 0          # the stem: the gradient crossed the whole network


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_loss_falls_on_real_views(name: str, shards: tuple[pa.Table, Path]) -> None:
    """A few dozen steps on 8 images, with the hooks (EMA teacher, queue, centre) called as in training."""
    torch.manual_seed(0)
    backbone, method = build_method(name)
    losses = train_steps(backbone, method, _views(name, shards), steps=30)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), np.round(losses, 2)


@pytest.mark.parametrize("name", [TINY, "test_vit"])
def test_create_backbone_gives_features_of_its_dim(name: str) -> None:
    backbone, dim = create_backbone(name)
    assert backbone(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def test_unknown_backbone_lists_close_matches() -> None:
    with pytest.raises(ConfigError, match="resnet18"):
        create_backbone("resnet188")


def test_backbone_init_from_file_is_strict(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    source, _ = create_backbone(TINY)
    with torch.no_grad():                       # weights no fresh initialisation could have: loading must happen
        for index, tensor in enumerate(source.state_dict().values()):
            if tensor.is_floating_point():
                tensor.fill_(0.5 + index)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    loaded, _ = create_backbone(TINY, init=str(tmp_path / "w.safetensors"))
    assert source.state_dict().keys() == loaded.state_dict().keys()
    for (key, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), key
    classifier = timm.create_model(TINY, num_classes=7)                   # a head is dropped
    with torch.no_grad():
        for tensor in classifier.parameters():
            tensor.fill_(-2.0)
    torch.save({"state_dict": classifier.state_dict()}, tmp_path / "head.pth")
    headless, _ = create_backbone(TINY, init=str(tmp_path / "head.pth"))
    assert all(torch.equal(p, torch.full_like(p, -2.0)) for p in headless.parameters())
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), tmp_path / "other.pth")
    with pytest.raises(RuntimeError, match="Missing key|Unexpected key|size mismatch"):
        create_backbone(TINY, init=str(tmp_path / "other.pth"))


def two_views(manifest: pa.Table, root: Path, size: int, seed: int, **kwargs) -> ViewStream:
    """The stream with two SimCLR views of `size` px."""
    return ViewStream(manifest, root, [simclr_view(size), simclr_view(size)], seed, **kwargs)


def _keys(dataset: ViewStream, workers: int = 0) -> list[str]:
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    return [item["key"] for item in loader]


def test_stream_yields_each_manifest_key_once(shards: tuple[pa.Table, Path]) -> None:
    manifest, root = shards
    dataset = two_views(manifest, root, 24, seed=1)
    wanted = sorted(manifest.column("key").to_pylist())
    for epoch in range(2):
        dataset.set_epoch(epoch)
        keys = []
        for item in dataset:
            assert [v.shape for v in item["views"]] == [(3, 24, 24)] * 2
            assert item["views"][0].dtype == torch.float32
            keys.append(item["key"])
        assert sorted(keys) == wanted      # s*-00 is in the shards but not listed: never yielded


@pytest.mark.parametrize("n_shards", [3, 1])   # 3 shards: split by shard; 1 shard: split by record
def test_stream_splits_work_over_workers(n_shards: int, shards: tuple[pa.Table, Path]) -> None:
    manifest, root = shards
    listed = sorted(set(manifest["shard"].to_pylist()))[:n_shards]
    manifest = manifest.filter(pc.is_in(manifest["shard"], pa.array(listed)))
    keys = _keys(two_views(manifest, root, 16, seed=0, shuffle_buffer=4), workers=2)
    assert sorted(keys) == sorted(manifest.column("key").to_pylist())


def test_stream_gives_ddp_ranks_equal_disjoint_shares(shards: tuple[pa.Table, Path]) -> None:
    manifest, root = shards
    shares = []
    for rank in range(2):
        dataset = two_views(manifest, root, 16, seed=0)
        dataset.set_rank(rank, 2)
        shares.append(_keys(dataset))
    assert len(shares[0]) == len(shares[1]) == manifest.num_rows // 2       # 33 rows: one left out
    assert not set(shares[0]) & set(shares[1])


def test_stream_is_deterministic_for_a_seed(shards: tuple[pa.Table, Path]) -> None:
    manifest, root = shards

    def run(seed: int, epoch: int, workers: int = 0) -> tuple[list[str], dict[str, torch.Tensor]]:
        dataset = two_views(manifest, root, 16, seed=seed)
        dataset.set_epoch(epoch)
        items = list(DataLoader(dataset, batch_size=None, num_workers=workers))
        return [i["key"] for i in items], {i["key"]: i["views"][0] for i in items}

    keys, views = run(seed=0, epoch=0)
    again_keys, again_views = run(seed=0, epoch=0)
    assert keys == again_keys
    assert all(torch.equal(views[k], again_views[k]) for k in keys)
    next_keys, next_views = run(seed=0, epoch=1)
    assert next_keys != keys and not torch.equal(views[keys[0]], next_views[keys[0]])
    other_keys, _ = run(seed=1, epoch=0)
    assert other_keys != keys
    _, split_views = run(seed=0, epoch=0, workers=2)     # a key's views do not depend on the split
    assert all(torch.equal(views[k], split_views[k]) for k in keys)


def test_round_robin_skips_follow_the_loader_order() -> None:
    assert round_robin_skips([3, 3], 3) == ([2, 1], 1)
    assert round_robin_skips([1, 3], 3) == ([1, 2], 0)      # worker 0 ran out after one batch
    assert round_robin_skips([2, 2], 10) == ([2, 2], 0)
    assert round_robin_skips([2, 2], 0) == ([0, 0], 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resumes_mid_epoch_with_the_remaining_batches(workers: int, shards: tuple[pa.Table, Path]) -> None:
    """A restarted loader continues the interrupted epoch: same batches, same order, same views."""
    manifest, root = shards

    def batches(done: int) -> list[tuple[list[str], torch.Tensor]]:
        dataset = two_views(manifest, root, 8, seed=0, shuffle_buffer=4)
        dataset.set_epoch(1)
        dataset.resume(done, 4)
        loader = DataLoader(dataset, batch_size=4, num_workers=workers, drop_last=True)
        return [(b["key"], b["views"][1]) for b in loader]

    full = batches(0)
    assert len(full) == (8 if workers == 0 else 7)   # 2 workers: 22 + 11 records -> 5 + 2 batches
    for done in (3, 6):
        resumed = batches(done)
        assert [keys for keys, _ in resumed] == [keys for keys, _ in full[done:]]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(resumed, full[done:]))


def test_stream_rejects_missing_shards_and_keys(shards: tuple[pa.Table, Path], tmp_path: Path) -> None:
    manifest, root = shards
    with pytest.raises(FileNotFoundError, match="nope.tar"):
        two_views(pa.Table.from_pylist([{"key": "a", "shard": "nope.tar"}]), root, 16, seed=0)
    ghost = pa.Table.from_pylist([{"key": "ghost", "shard": "curated/c-000000.tar"}])
    with pytest.raises(ValueError, match="ghost"):
        list(two_views(ghost, root, 16, seed=0))


def test_warmup_cosine_schedule() -> None:
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(0, 0, 100) == pytest.approx(1.0)
