"""LeJEPA (Balestriero & LeCun 2025): no teacher, no stop-gradient, one trade-off weight. Every view's projection
is pulled toward the centroid of the global views (invariance), and SIGReg pushes each view's projections toward
an isotropic Gaussian (sliced Epps-Pulley test on random directions redrawn every step).

Official code: rbalestr-lab/lejepa (MINIMAL.md at 2f2d9704, lejepa/multivariate/slicing.py and
lejepa/univariate/epps_pulley.py at a74fcb99); the comments cite file:line. The defaults are MINIMAL.md's recommended
run (4 views of one size, all pulled to their mean); `local_views` adds the paper's smaller crops, pulled to the
centroid of the global views as in LightlySSL. Its optimiser (AdamW lr 2e-3 at batch 256, weight decay 0.05, one
warmup epoch, no gradient clipping: MINIMAL.md:155-161,219,222) is set through pretrain.* (README "Pretraining").
Its loss tracks downstream accuracy, so pas logs it on a fixed held-out sample of the curated set as a label-free
score of the dataset (`pas compare` ranks experiments by it).
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from pas.ssl.args import LeJEPAArgs
from pas.ssl.augment import STRONG_JITTER, simclr_view
from pas.ssl.base import MethodOutput, Progress, SSLMethod, Transform
from pas.ssl.dist import mean_over_ranks, world_size
from pas.ssl.heads import mlp


def random_directions(dim: int, slices: int, step: int, device: torch.device | str) -> Tensor:
    """(dim, slices) unit columns drawn from a generator seeded by the step: new every step, equal on every rank."""
    generator = torch.Generator().manual_seed(int(step))
    directions = torch.randn(dim, slices, generator=generator)
    return (directions / directions.norm(dim=0, keepdim=True)).to(device)


def epps_pulley_weights(knots: int, t_max: float) -> tuple[Tensor, Tensor]:
    """(t, w): knots on [0, t_max] and trapezoid weights doubled (the integrand is even) times phi(t) = exp(-t^2/2)
    (MINIMAL.md:61-68)."""
    t = torch.linspace(0.0, t_max, knots)
    step = t_max / (knots - 1)
    trapezoid = torch.full((knots,), 2 * step)
    trapezoid[[0, -1]] = step
    phi = torch.exp(-t.square() / 2)
    return t, trapezoid * phi


def sigreg(z: Tensor, directions: Tensor, knots: int = 17, t_max: float = 3.0, across_ranks: bool = True) -> Tensor:
    """Sliced Epps-Pulley statistic of one view's projections z (N, P) against N(0, I), averaged over the
    directions (P, M): about 0 for Gaussian samples, large for a collapsed batch. The empirical characteristic
    function is averaged over ranks, so the statistic is that of the global batch (MINIMAL.md:70-76,
    epps_pulley.py:90-97)."""
    t, weights = epps_pulley_weights(knots, t_max)
    t, weights = t.to(z.device), weights.to(z.device)
    x = (z.float() @ directions.float()).unsqueeze(-1) * t                     # (N, M, T)
    reduce = mean_over_ranks if across_ranks else (lambda v: v)
    real = reduce(x.cos().mean(0))                                              # (M, T)
    imag = reduce(x.sin().mean(0))
    err = (real - torch.exp(-t.square() / 2)).square() + imag.square()         # (M, T)
    statistic = err @ weights * (z.shape[0] * (world_size() if across_ranks else 1))   # (M,)
    return statistic.mean()


def invariance(projections: list[Tensor], global_views: int) -> Tensor:
    """Mean squared distance of every view's projection (N, P) to the centroid of the first `global_views` ()
    (MINIMAL.md:173 with every view global: `(proj.mean(0) - proj).square().mean()`)."""
    centroid = torch.stack(projections[:global_views]).float().mean(0)          # (N, P)
    return torch.stack([(p.float() - centroid).square().mean() for p in projections]).mean()


def lejepa_loss(projections: list[Tensor], directions: Tensor, args: LeJEPAArgs,
                across_ranks: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """(total, invariance, sigreg): lamb x mean SIGReg over views + (1 - lamb) x invariance."""
    inv = invariance(projections, args.global_views)
    sig = torch.stack([sigreg(p, directions, args.knots, args.t_max, across_ranks) for p in projections]).mean()
    return args.lamb * sig + (1 - args.lamb) * inv, inv, sig


class LeJEPA(SSLMethod):
    """Backbone + projector; every view is projected, the loss needs no teacher, queue or stop-gradient."""

    Args = LeJEPAArgs

    def __init__(self, backbone: nn.Module, feature_dim: int, args: LeJEPAArgs) -> None:
        super().__init__()
        self.args = args
        self.heldout_images = args.heldout_images
        self.projector = mlp([feature_dim, args.proj_hidden_dim, args.proj_hidden_dim, args.proj_dim])
        self.register_buffer("step", torch.zeros((), dtype=torch.long))   # seeds the directions; in checkpoints

    @classmethod
    def view_transforms(cls, args: LeJEPAArgs, image_size: int) -> list[Transform]:
        """`global_views` crops at image_size, then `local_views` at local_crop_size; strong jitter, grayscale,
        blur (p 0.5), solarise (p 0.2), flip (MINIMAL.md:103-108)."""
        view = functools.partial(simclr_view, blur=0.5, solarize=0.2, jitter=STRONG_JITTER)
        return [*[view(image_size, args.global_crop_scale) for _ in range(args.global_views)],
                *[view(args.local_crop_size, args.local_crop_scale) for _ in range(args.local_views)]]

    def project(self, backbone: nn.Module, views: list[Tensor]) -> list[Tensor]:
        """One (N, P) projection per view, one backbone pass per resolution."""
        n, out = views[0].shape[0], []
        for start in (0, self.args.global_views):
            group = views[start:] if start else views[: self.args.global_views]
            if group:
                out += list(self.projector(backbone(torch.cat(group))).split(n))
        return out

    def forward(self, backbone: nn.Module, views: list[Tensor]) -> MethodOutput:
        """views: global (N, 3, S, S) then local (N, 3, s, s) batches -> the LeJEPA loss."""
        projections = self.project(backbone, views)
        directions = random_directions(self.args.proj_dim, self.args.num_slices, int(self.step), views[0].device)
        loss, inv, sig = lejepa_loss(projections, directions, self.args)
        return MethodOutput(loss, {"invariance": inv.detach(), "sigreg": sig.detach()}, projections[0].detach())

    def after_optimizer_step(self, backbone: nn.Module, progress: Progress) -> None:
        """Count the step: the next one draws new SIGReg directions."""
        self.step.add_(1)

    @torch.no_grad()
    def label_free_score(self, backbone: nn.Module, views: list[Tensor]) -> Tensor:
        """The LeJEPA loss of held-out views on fixed directions (seed 0) and this process's batch only: comparable
        across experiments and runs, whatever their step count or device count."""
        directions = random_directions(self.args.proj_dim, self.args.num_slices, 0, views[0].device)
        return lejepa_loss(self.project(backbone, views), directions, self.args, across_ranks=False)[0]
