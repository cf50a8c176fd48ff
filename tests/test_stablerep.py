"""StableRep: the multi-positive contrastive loss as the official code computes it, the prompt-group sampler, the
global batch over two gloo ranks and `pas plan`'s price. The pretrain stage on the offline default (`dvc exp run -S
pretrain.method=stablerep pretrain`) is tests/test_pipeline_e2e.py's, on that module's reproduced repository."""
from __future__ import annotations

import json
import math
import os
import socket
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import make_image, write_image_shards
from pas.ssl.groups import GroupStream, epoch_groups, group_count, prompt_pools
from pas.ssl.simclr import nt_xent
from pas.ssl.stablerep import StableRep, StableRepArgs, multi_pos_con_loss
from pas.ssl.views import ViewSpec


def test_with_two_views_of_one_image_per_group_the_loss_is_simclrs_nt_xent():
    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 8, requires_grad=True), torch.randn(16, 8, requires_grad=True)
    labels = torch.arange(16).repeat(2)                        # m = 2: group i = views i and 16 + i
    ours = multi_pos_con_loss(torch.cat([z1, z2]), labels, 0.2)
    grads = torch.autograd.grad(ours, [z1, z2])
    theirs = nt_xent(z1, z2, 0.2)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    for mine, simclr in zip(grads, torch.autograd.grad(theirs, [z1, z2])):
        assert torch.allclose(mine, simclr, atol=1e-6)


def test_the_loss_of_a_hand_worked_batch():
    # rows a, b, c share prompt 0 and d is alone; a = b = (1, 0), c = d = (0, 1), temperature 1:
    # a: logits b 1, c 0, d 0, target (b 1/2, c 1/2): log(e + 2) - 1/2; b the same;
    # c: logits a 0, b 0, d 1, target (a 1/2, b 1/2): log(e + 2); d has no positive: an all-zero target, loss 0
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 3.0]])   # d's length does not count
    loss = multi_pos_con_loss(feats, torch.tensor([0, 0, 0, 7]), 1.0)
    assert loss.item() == pytest.approx((3 * math.log(math.e + 2) - 1) / 4, rel=1e-6)


def test_groups_sharing_a_prompt_are_positives_of_each_other():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    apart = multi_pos_con_loss(feats, torch.tensor([0, 1, 0, 1]), 0.5)
    together = multi_pos_con_loss(feats, torch.tensor([0, 0, 0, 0]), 0.5)
    # all one prompt: every other row is a positive, the target is uniform: the loss is the log-softmax's mean
    logits = feats / feats.norm(dim=1, keepdim=True)
    logits = logits @ logits.T / 0.5 - torch.eye(4) * 1e9
    assert together.item() == pytest.approx(-(torch.log_softmax(logits, 1) * (1 - torch.eye(4)) / 3).sum(1).mean()
                                            .item(), rel=1e-5)
    assert apart.item() != pytest.approx(together.item())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch():
    torch.manual_seed(0)
    return torch.randn(2, 12, 8), torch.tensor([[0, 1, 2, 3, 0, 4] * 2, [5, 2, 6, 5, 7, 8] * 2])  # prompt 2 on both


def _ranked_loss(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    feats, labels = _global_batch()
    mine = feats[rank].clone().requires_grad_(True)
    loss = multi_pos_con_loss(mine, labels[rank], 0.1)
    loss.backward()
    torch.save({"loss": loss.item(), "grad": mine.grad}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_over_two_gloo_ranks_the_loss_is_the_single_process_loss_of_the_global_batch(tmp_path):
    mp.spawn(_ranked_loss, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    feats, labels = _global_batch()
    whole = feats.reshape(24, 8).clone().requires_grad_(True)
    loss = multi_pos_con_loss(whole, labels.reshape(24), 0.1)
    loss.backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(r["loss"] == pytest.approx(loss.item(), rel=1e-5) for r in ranks)
    # DDP averages the ranks' gradients: each rank's is the global batch's gradient of its rows x world size
    assert torch.allclose(torch.cat([r["grad"] for r in ranks]) / 2, whole.grad, atol=1e-6)


def _manifest() -> pa.Table:
    rows = [{"key": f"p1-{i}", "source": "generated", "prompt": "a cat"} for i in range(5)]
    rows += [{"key": f"p2-{i}", "source": "generated", "prompt": "a dog"} for i in range(2)]
    rows += [{"key": "p3-0", "source": "generated", "prompt": "a cow"}]
    rows += [{"key": f"r-{i}", "source": "retrieved", "prompt": "a cat"} for i in range(2)]   # never a cat's sibling
    return pa.Table.from_pylist(rows)


def test_prompt_groups_hold_m_views_of_one_prompt_and_every_image_once_an_epoch():
    pools = prompt_pools(_manifest())
    assert sorted(len(keys) for _, keys in pools) == [1, 1, 1, 2, 5]
    groups = epoch_groups(pools, 3, seed=0, epoch=0)
    assert len(groups) == group_count(pools, 3) == 6                 # cat 2 groups, dog 1, cow 1, two retrieved 1 each
    assert all(len(keys) == 3 for _, keys in groups)
    assert all(len({key.split("-")[0] for key in keys}) == 1 for _, keys in groups)   # one prompt (or image) a group
    assert all(len({label for label, keys in groups if key in keys}) == 1 for key in _manifest()["key"].to_pylist())
    assert {key for _, keys in groups for key in keys} == set(_manifest()["key"].to_pylist())
    cats = [keys for _, keys in groups if keys[0].startswith("p1")]
    assert sorted(k for keys in cats for k in dict.fromkeys(keys)) == [f"p1-{i}" for i in range(5)]  # each once
    assert sorted(Counter(keys).most_common(1)[0][1] for keys in cats) == [1, 2]   # 3 images, then 2 + a second view
    assert ("r-0", "r-0", "r-0") in [keys for _, keys in groups]     # a retrieved image: m views of itself
    # a label per prompt (cat, dog, cow) and per lone image (r-0, r-1): the cat's two groups share theirs
    assert len({label for label, _ in groups}) == 5
    assert len({label for label, keys in groups if keys[0].startswith("p1")}) == 1
    assert epoch_groups(pools, 3, seed=0, epoch=0) == groups
    assert epoch_groups(pools, 3, seed=0, epoch=1) != groups
    assert epoch_groups(pools, 3, seed=1, epoch=0) != groups


def _stream(tmp_path: Path, m: int = 3) -> GroupStream:
    images = [(key, make_image(i, 32)) for i, key in enumerate(_manifest()["key"].to_pylist())]
    rows = write_image_shards(tmp_path, [images[::2], images[1::2]])     # a prompt's images lie in both shards
    manifest = pa.Table.from_pylist([{**row, **meta} for row, meta in zip(rows, _manifest().to_pylist()[::2]
                                                                          + _manifest().to_pylist()[1::2])])
    return GroupStream(manifest, tmp_path, [ViewSpec(16)] * m, seed=0)


def test_the_group_stream_yields_each_groups_views_and_label(tmp_path):
    stream = _stream(tmp_path)
    items = list(stream)
    assert len(items) == stream.num_images == 6
    assert all(len(item["views"]) == 3 and item["views"][0].shape == (3, 16, 16) for item in items)
    alone = next(item for item in items if item["key"] == "r-1")
    assert not torch.equal(alone["views"][0], alone["views"][1])     # three different crops of one image
    assert [(i["label"], i["key"]) for i in items] == [(label, keys[0]) for label, keys in epoch_groups(
        stream.pools, 3, 0, 0)]
    again = list(_stream(tmp_path))
    assert all(torch.equal(a, b) for x, y in zip(items, again) for a, b in zip(x["views"], y["views"]))


def test_ranks_get_whole_groups_and_a_resumed_epoch_continues_where_it_stopped(tmp_path):
    stream = _stream(tmp_path)
    shares = []
    for rank in range(2):
        stream.set_rank(rank, 2)
        shares.append([(label, keys) for label, keys in stream.rank_groups()])
    assert len(shares[0]) == len(shares[1]) == 3 and not set(shares[0]) & set(shares[1])
    assert set(shares[0]) | set(shares[1]) == set(epoch_groups(stream.pools, 3, 0, 0))
    stream.set_rank(0, 1)
    whole = [item["key"] for item in stream]
    stream.resume(2, 2)                                              # two batches of 2 groups were trained on
    assert [item["key"] for item in stream] == whole[4:]


def test_stablerep_trains_a_step_on_groups_with_labels():
    args = StableRepArgs(images_per_prompt=3, mlp_dim=16, proj_dim=8)
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    method = StableRep(backbone, 4, args)
    assert len(StableRep.view_transforms(args, 16)) == 3
    views = [torch.randn(4, 3, 16, 16) for _ in range(3)]
    out = method(backbone, views, torch.tensor([0, 1, 0, 2]))
    out.loss.backward()
    assert math.isfinite(out.loss.item()) and out.embedding.shape == (4, 8)
    assert backbone[0].weight.grad is not None


def test_pretrain_streams_prompt_groups_and_gives_their_labels_to_stablerep(tmp_path, monkeypatch):
    from pas.ssl.pretrain import PretrainConfig, pretrain

    seen = []
    forward = StableRep.forward

    def recording(self, backbone, views, labels=None):
        seen.append((len(views), None if labels is None else labels.tolist()))
        return forward(self, backbone, views, labels)

    monkeypatch.setattr(StableRep, "forward", recording)
    images = [(f"p{p}-{i}", make_image(10 * p + i, 32)) for p in range(6) for i in range(4)]   # 6 prompts x 4
    rows = write_image_shards(tmp_path, [images[::2], images[1::2]])
    manifest = pa.Table.from_pylist([{**row, "source": "generated", "prompt": f"prompt {row['key'][1]}"}
                                     for row in rows])
    cfg = PretrainConfig(method="stablerep", backbone="test_resnet", image_size=32, epochs=1, batch_size=4,
                         max_steps=2, method_args={"stablerep": {"images_per_prompt": 2, "mlp_dim": 16, "proj_dim": 8}})
    (tmp_path / "out").mkdir()
    metrics = pretrain(manifest, tmp_path, cfg, tmp_path / "out", seed=0)
    card = json.loads((tmp_path / "out/model_card.json").read_text())
    assert card["derived"]["prompt_groups"] == {"groups": 12, "images": 24, "views_per_group": 2}
    assert metrics["steps"] == 2 and [views for views, _ in seen] == [2, 2]
    assert all(labels is not None and len(labels) == 4 and set(labels) <= set(range(6)) for _, labels in seen)


def test_bad_images_per_prompt_is_one_clear_error():
    from pas.core.config import ConfigError
    from pas.ssl import method_args

    with pytest.raises(ConfigError, match="pretrain.method_args.stablerep.images_per_prompt"):
        method_args("stablerep", {"images_per_prompt": 1}, "pretrain.method_args.stablerep")


def test_pas_plan_prices_stablerep_groups_as_simclr_samples(tmp_path, capsys):
    from pas.cli import main

    figure = {"task": "pretrain", "model": "simclr/resnet18", "batch": 64, "device": "h100", "images_per_s": 5000.0,
              "gflops_per_image": 1.7, "machine": "NVIDIA H100 80GB HBM3", "date": "2026-12-01"}
    table = tmp_path / "throughput.json"
    table.write_text(json.dumps({"figures": [figure]}))
    common = ["plan", "-S", "size=1.2M", "-S", "pretrain.backbone=resnet18", "-S", "pretrain.epochs=1",
              "--gpu", "h100", "--pool-images", "0", "--table", str(table)]
    assert main([*common, "-S", "pretrain.method=stablerep"]) == 0
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("pretrain "))
    groups = 600_000 // 6 + 600_000                            # mix 0.5: 6 generated images a group, retrieved alone
    images = groups // 64 * 64 * 3                             # whole batches of 64 groups, 6 views = 3 SimCLR samples
    assert int(row[1].replace(",", "")) == images
    assert float(row[2]) == pytest.approx(images / 5000.0 / 3600, rel=1e-2)
