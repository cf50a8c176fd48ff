"""NNCLR (Dwibedi et al. 2021): contrast each view's prediction with the other view's nearest neighbour
in a FIFO support set of past projections."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pas.ssl.args import NNCLRArgs
from pas.ssl.augment import byol_views
from pas.ssl.base import MethodOutput, Progress, SSLMethod, Transform
from pas.ssl.dist import gather, rank
from pas.ssl.heads import mlp
from pas.ssl.support import SupportQueue


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
