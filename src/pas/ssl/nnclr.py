"""NNCLR (Dwibedi et al. 2021): contrast each view's prediction with the other view's nearest neighbour
in a FIFO support set of past projections."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pas.core.config import require, require_fields
from pas.ssl.augment import byol_views
from pas.ssl.base import MethodOutput, Progress, SSLMethod, Transform
from pas.ssl.dist import gather, rank
from pas.ssl.heads import mlp
from pas.ssl.support import SupportQueue


@dataclass(frozen=True)
class NNCLRArgs:
    """params.pretrain.method_args.nnclr (defaults: the paper)."""

    temperature: float = 0.1
    queue_size: int = 98304
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 256
    pred_hidden_dim: int = 4096

    def validate(self, prefix: str) -> None:
        """Check ranges."""
        require(self.temperature > 0, f"{prefix}.temperature", self.temperature, "use a positive number")
        require_fields(self, prefix, ("queue_size", "proj_hidden_dim", "proj_output_dim", "pred_hidden_dim"),
                       lambda v: v >= 1, "use an integer >= 1")


def check_queue(queue_size: int, global_batch: int, key: str) -> None:
    """The support queue must hold a whole number of global batches."""
    require(queue_size % global_batch == 0, key, queue_size,
            f"use a multiple of the global batch ({global_batch} = batch_size x devices)")


def nn_contrast(nn_: Tensor, p: Tensor, temperature: float) -> Tensor:
    """l(a, b): nn_ (N, D) targets, p (N, D) predictions -> cross-entropy of
    normalize(nn_) @ normalize(p).T / temperature against the diagonal (); p is gathered over ranks."""
    nn_ = F.normalize(nn_.float(), dim=-1)
    p = F.normalize(gather(p).float(), dim=-1)                                  # (world*N, D)
    logits = nn_ @ p.T / temperature                                            # (N, world*N)
    n = nn_.shape[0]
    labels = torch.arange(n, device=nn_.device) + rank() * n
    return F.cross_entropy(logits, labels)


def symmetric(loss: Any, a1: Tensor, b2: Tensor, a2: Tensor, b1: Tensor, temperature: float) -> Tensor:
    """0.5 loss(a1, b2) + 0.5 loss(a2, b1): each view's target against the other view's prediction."""
    return 0.5 * loss(a1, b2, temperature) + 0.5 * loss(a2, b1, temperature)


class NNCLR(SSLMethod):
    """Projector + predictor; the queue holds normalised online projections of view 1."""

    Args = NNCLRArgs

    def __init__(self, backbone: nn.Module, feature_dim: int, args: NNCLRArgs) -> None:
        super().__init__()
        self.temperature = args.temperature
        hidden, out = args.proj_hidden_dim, args.proj_output_dim
        self.projector = mlp([feature_dim, hidden, hidden, out], last_bn=True)
        self.predictor = mlp([out, args.pred_hidden_dim, out])
        self.support = SupportQueue(args.queue_size, out)
        self._pending: list[Tensor] = []

    @classmethod
    def view_transforms(cls, args: NNCLRArgs, image_size: int) -> list[Transform]:
        """BYOL's asymmetric augmentations, as in the paper."""
        return byol_views(image_size)

    @classmethod
    def check(cls, args: NNCLRArgs, image_size: int, global_batch: int, prefix: str) -> None:
        """The queue holds whole global batches."""
        check_queue(args.queue_size, global_batch, f"{prefix}.queue_size")

    def forward(self, backbone: nn.Module, views: list[Tensor]) -> MethodOutput:
        """views: two (N, 3, H, W) batches -> symmetric NN contrast."""
        za, zb = (self.projector(backbone(v)) for v in views[:2])            # (N, D) each, BN per view
        pa, pb = self.predictor(za), self.predictor(zb)                      # (N, D)
        z1, z2 = F.normalize(za.detach().float(), dim=1), F.normalize(zb.detach().float(), dim=1)
        _, nn1 = self.support.nearest(z1, 1)                                 # (N, 1, D)
        _, nn2 = self.support.nearest(z2, 1)
        loss = symmetric(nn_contrast, nn1[:, 0], pb, nn2[:, 0], pa, self.temperature)
        if self.training:
            self._pending.append(z1)
        return MethodOutput(loss, {}, z1)

    def after_optimizer_step(self, backbone: nn.Module, progress: Progress) -> None:
        """Enqueue this step's view-1 projections (from every rank)."""
        for z1 in self._pending:
            self.support.push(gather(z1))
        self._pending.clear()
