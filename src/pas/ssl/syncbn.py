"""Batch statistics over the global batch when DDP runs more than one process.

On GPUs this is Lightning's `sync_batchnorm` plugin (torch's SyncBatchNorm). torch's SyncBatchNorm cannot run on
the CPU (its kernels, `batch_norm_stats` and friends, are CUDA-only, and DDP refuses CPU modules that hold one),
yet a CPU world (gloo: torchrun on CPU nodes, the tests) should train the same model; there every BatchNorm*d
becomes a GlobalBatchNorm*d in place: the same arithmetic with differentiable all-reduces (mean and biased
variance over every rank's rows, the unbiased variance into the running estimate). The all-reduce's backward sums
the ranks' gradients, as SyncBatchNorm's backward does, so DDP's averaging gives the global batch's gradient.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import LayerSync, TorchSyncBatchNorm
from torch import Tensor, nn

from pas.ssl.dist import world_size


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):   # noqa: SLF001
    """BatchNorm whose training statistics are the global batch's under torch.distributed (any device)."""

    def forward(self, input: Tensor) -> Tensor:
        """Global batch statistics in training with more than one process; plain BatchNorm otherwise."""
        if self.training and dist.is_available() and dist.is_initialized() and world_size() > 1:
            return self._global(input)
        return super().forward(input)

    def _global(self, x: Tensor) -> Tensor:
        """(N, C, *) -> normalised with the mean and variance of every rank's (N, C, *) together."""
        from torch.distributed.nn.functional import all_reduce

        self._check_input_dim(x)
        dims = [0, *range(2, x.ndim)]
        shape = [1, -1] + [1] * (x.ndim - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        dist.all_reduce(count)                                                      # rows over all ranks
        mean = all_reduce(x.sum(dims)) / count                                      # (C,)
        var = all_reduce((x - mean.view(shape)).pow(2).sum(dims)) / count           # (C,) biased
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / (count - 1).clamp_min(1), factor)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


class GlobalBatchNorm1d(GlobalBatchNorm, nn.BatchNorm1d):
    """BatchNorm1d over the global batch."""


class GlobalBatchNorm2d(GlobalBatchNorm, nn.BatchNorm2d):
    """BatchNorm2d over the global batch."""


class GlobalBatchNorm3d(GlobalBatchNorm, nn.BatchNorm3d):
    """BatchNorm3d over the global batch."""


GLOBAL = {nn.BatchNorm1d: GlobalBatchNorm1d, nn.BatchNorm2d: GlobalBatchNorm2d, nn.BatchNorm3d: GlobalBatchNorm3d}


class CpuSyncBatchNorm(LayerSync):
    """Lightning layer-sync plugin for CPU worlds: BatchNorm*d <-> GlobalBatchNorm*d in place (same state)."""

    def apply(self, model: nn.Module) -> nn.Module:
        """Every BatchNorm1d/2d/3d of `model` synchronises over the ranks."""
        for module in model.modules():
            if type(module) in GLOBAL:
                module.__class__ = GLOBAL[type(module)]
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        """Back to the plain BatchNorm classes (Lightning calls this when fitting ends)."""
        plain = {v: k for k, v in GLOBAL.items()}
        for module in model.modules():
            if type(module) in plain:
                module.__class__ = plain[type(module)]
        return model


def has_batchnorm(module: nn.Module) -> bool:
    """Whether `module` holds a BatchNorm layer (whose statistics depend on the batch)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())   # noqa: SLF001


def layer_sync(world: int, module: nn.Module, accelerator: str) -> list[LayerSync]:
    """Lightning plugins for a run of `world` processes: when there is more than one and the model has BatchNorm,
    global statistics (SimCLR, BYOL and Barlow Twins train so: the official code converts the whole model with
    convert_sync_batchnorm), with Lightning's SyncBatchNorm plugin (= Trainer(sync_batchnorm=True)) on GPUs and
    CpuSyncBatchNorm on the CPU; none otherwise."""
    if world <= 1 or not has_batchnorm(module):
        return []
    return [CpuSyncBatchNorm() if accelerator == "cpu" else TorchSyncBatchNorm()]
