"""Two CPU processes over gloo train one step of SimCLR and Barlow Twins on a BatchNorm backbone under DDP with
the pretrain stage's sync plugin: each rank's loss, the DDP-averaged gradients and the BatchNorm running statistics
equal one process's on the concatenated (global) batch."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

GLOBAL_BATCH, WORLD = 8, 2
METHODS = ("simclr", "barlow_twins")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Step(nn.Module):
    """backbone + method as one module, so DDP sees the forward that makes the loss."""

    def __init__(self, method_name: str) -> None:
        super().__init__()
        from pas.ssl.barlow_twins import BarlowTwins, BarlowTwinsArgs
        from pas.ssl.simclr import SimCLR, SimCLRArgs

        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
        self.method = (SimCLR(self.backbone, 8, SimCLRArgs(temperature=0.2, proj_dim=6)) if method_name == "simclr"
                       else BarlowTwins(self.backbone, 8, BarlowTwinsArgs(16, 12, 0.0051)))

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        return self.method(self.backbone, views).loss


def _views() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=gen) for _ in range(2)]


def _result(step: nn.Module, loss: torch.Tensor) -> dict:
    norms = [m for m in step.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return {"loss": loss.item(), "grads": {n: p.grad.clone() for n, p in step.named_parameters()},
            "running": [(m.running_mean.clone(), m.running_var.clone()) for m in norms], "norms": len(norms),
            "types": sorted({type(m).__name__ for m in norms})}


def _rank_steps(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    from torch.nn.parallel import DistributedDataParallel

    from pas.ssl.syncbn import layer_sync

    for method_name in METHODS:
        step = _Step(method_name)
        for plugin in layer_sync(WORLD, step, "cpu"):       # as pretrain hands them to Lightning
            step = plugin.apply(step)
        ddp = DistributedDataParallel(step)
        mine = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
        loss = ddp([v[mine] for v in _views()])
        loss.backward()                                     # DDP averages the gradients over ranks
        torch.save(_result(step, loss), f"{out}/{method_name}-rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank_steps, args=(_free_port(), str(out)), nprocs=WORLD, join=True)   # one spawn for every method
    return out


@pytest.mark.parametrize("method_name", METHODS)
def test_two_ranks_train_on_the_global_batch(ranks_out, method_name):
    step = _Step(method_name)
    loss = step(_views())
    loss.backward()
    whole = _result(step, loss)
    ranks = [torch.load(ranks_out / f"{method_name}-rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r in ranks:
        assert set(r["types"]) == {"GlobalBatchNorm1d", "GlobalBatchNorm2d"}      # backbone and projector
        assert r["norms"] == whole["norms"]
        assert r["loss"] == pytest.approx(whole["loss"], rel=1e-5, abs=1e-6)
        scale = max(float(g.abs().max()) for g in whole["grads"].values())   # biases before a norm: ~0 gradients
        for name, grad in whole["grads"].items():
            assert float((r["grads"][name] - grad).abs().max()) <= 1e-5 * scale, name      # float32 sums
        for (mean, var), (whole_mean, whole_var) in zip(r["running"], whole["running"], strict=True):
            assert torch.allclose(mean, whole_mean, atol=1e-6) and torch.allclose(var, whole_var, atol=1e-6)


def test_layer_sync_only_for_a_world_with_batchnorm():
    from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm

    from pas.ssl.syncbn import CpuSyncBatchNorm, layer_sync

    with_bn = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    without = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    assert layer_sync(1, with_bn, "cuda") == [] and layer_sync(4, without, "cuda") == []
    assert [type(p) for p in layer_sync(2, with_bn, "cuda")] == [TorchSyncBatchNorm]   # = sync_batchnorm=True
    assert [type(p) for p in layer_sync(2, with_bn, "cpu")] == [CpuSyncBatchNorm]


def test_global_batch_norm_is_plain_batch_norm_in_one_process_and_converts_back():
    import copy

    from pas.ssl.syncbn import CpuSyncBatchNorm, GlobalBatchNorm2d

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    synced = CpuSyncBatchNorm().apply(copy.deepcopy(plain))
    assert type(synced[1]) is GlobalBatchNorm2d
    x = torch.randn(6, 3, 5, 5)
    assert torch.equal(synced(x), plain(x))
    assert torch.equal(synced[1].running_var, plain[1].running_var)
    back = CpuSyncBatchNorm().revert(synced)                # Lightning calls this when fitting ends
    assert type(back[1]) is nn.BatchNorm2d and back.state_dict().keys() == plain.state_dict().keys()
    assert torch.equal(back.eval()(x), plain.eval()(x))
