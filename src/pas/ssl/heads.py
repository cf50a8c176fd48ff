"""Building blocks the methods share: MLP heads and the EMA (momentum) teacher."""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn


def mlp(dims: Sequence[int], last_bn: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU between consecutive `dims`, a plain Linear at the end (+ BN if `last_bn`)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
    if last_bn:
        layers.append(nn.BatchNorm1d(dims[-1]))
    return nn.Sequential(*layers)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of `module` to be updated by EMA only (no gradients, not in the optimizer)."""
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.detach(), 1.0 - momentum)


def cosine_momentum(base: float, final: float, fraction: float) -> float:
    """EMA momentum rising from `base` to `final` on a half cosine as training goes from 0 to 1."""
    return final - (final - base) * (math.cos(math.pi * min(1.0, max(0.0, fraction))) + 1) / 2
