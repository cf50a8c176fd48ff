"""Barlow Twins (Zbontar et al. 2021): make the cross-correlation of the two views' embeddings the identity."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pas.ssl.args import BarlowTwinsArgs
from pas.ssl.augment import byol_views
from pas.ssl.base import MethodOutput, SSLMethod, Transform
from pas.ssl.dist import mean_over_ranks, world_size
from pas.ssl.heads import mlp


def standardize(z: Tensor, eps: float = 1e-5) -> Tensor:
    """(N, D) -> zero mean, unit (biased) variance per dimension over the global batch (every rank's rows), as the
    official BatchNorm1d(affine=False) converted to SyncBatchNorm does in training (facebookresearch/barlowtwins
    main.py lines 89 and 206: convert_sync_batchnorm(model), self.bn). Ranks hold equal batches."""
    if world_size() == 1:
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)
    mean = mean_over_ranks(z.mean(0))
    var = mean_over_ranks((z - mean).pow(2).mean(0))
    return (z - mean) / torch.sqrt(var + eps)


def off_diagonal(c: Tensor) -> Tensor:
    """(D, D) -> (D * (D - 1),) the off-diagonal entries."""
    d = c.shape[0]
    return c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float) -> tuple[Tensor, Tensor]:
    """z1, z2 (N, D) -> (on-diagonal term (), lambd-weighted off-diagonal term ()).

    C = standardize(z1).T @ standardize(z2) / N (D, D) over the global batch: each rank's rows standardised
    with the global statistics, its products summed over ranks and divided by the global batch, as the official
    forward's `c = self.bn(z1).T @ self.bn(z2); c.div_(batch_size); all_reduce(c)` (main.py lines 213-217). The
    loss is sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2.
    """
    n = z1.shape[0]
    c = mean_over_ranks(standardize(z1.float()).T @ standardize(z2.float()) / n)
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = lambd * off_diagonal(c).pow(2).sum()
    return on, off


class BarlowTwins(SSLMethod):
    """A wide 3-layer projector and the redundancy-reduction loss."""

    Args = BarlowTwinsArgs

    def __init__(self, backbone: nn.Module, feature_dim: int, args: BarlowTwinsArgs) -> None:
        super().__init__()
        self.lambd = args.lambd
        hidden = args.proj_hidden_dim
        self.projector = mlp([feature_dim, hidden, hidden, args.proj_output_dim])

    @classmethod
    def view_transforms(cls, args: BarlowTwinsArgs, image_size: int) -> list[Transform]:
        """BYOL's asymmetric augmentations, as in the paper."""
        return byol_views(image_size)

    def forward(self, backbone: nn.Module, views: list[Tensor]) -> MethodOutput:
        """views: two (N, 3, H, W) batches -> Barlow Twins loss of their projections."""
        z1, z2 = (self.projector(backbone(v)) for v in views[:2])            # (N, D) each, BN per view
        on, off = barlow_twins_loss(z1, z2, self.lambd)
        return MethodOutput(on + off, {"on_diagonal": on.detach(), "off_diagonal": off.detach()}, z1.detach())
