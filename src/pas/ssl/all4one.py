"""All4One (Estepa et al., ICCV 2023): symbiotic neighbour contrast with centroids, neighbours and features.

As specified in ../shared/PAPERS.md (the effective values of the authors' code): an online and a
momentum (EMA, 0.99 -> 1.0 cosine) backbone + projector; a FIFO support queue of L2-normalised
momentum projections of view 1; k = 5 neighbours by dot product; a 3-layer, 8-head centroid
Transformer; loss 0.5 L_centroid + 0.5 L_neighbour + 0.5 L_feature.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pas.ssl.args import All4OneArgs
from pas.ssl.augment import byol_views, simclr_view
from pas.ssl.barlow_twins import off_diagonal
from pas.ssl.base import MethodOutput, Progress, SSLMethod, Transform
from pas.ssl.centroid import CentroidEncoder
from pas.ssl.dist import gather
from pas.ssl.heads import cosine_momentum, ema_update, mlp, momentum_copy
from pas.ssl.nnclr import nn_contrast, symmetric
from pas.ssl.support import SupportQueue

CIFAR_SIZE = 32   # solo-learn's CIFAR recipes blur nothing; its ImageNet-100 ones do


def feature_contrast(z1_m: Tensor, z2_m: Tensor, z1: Tensor, z2: Tensor, scale: float = 10.0) -> Tensor:
    """Redundancy reduction between momentum and online projections across the feature dimension ().

    z1_m, z2_m (N, D): momentum projections of views 1, 2; z1, z2 (N, D): online projections.
    Each is normalised along the batch; C1 = Z1m^T Z2 and C2 = Z2m^T Z1 (D, D);
    on = sqrt(mean of (diag - 1)^2 over C1 and C2), off = sqrt(mean of offdiag^2 over C1 and C2);
    returns scale * (0.5 on + 0.5 off).
    """
    c1 = F.normalize(z1_m.float(), dim=0).T @ F.normalize(z2.float(), dim=0)          # (D, D)
    c2 = F.normalize(z2_m.float(), dim=0).T @ F.normalize(z1.float(), dim=0)
    on = (0.5 * ((torch.diagonal(c1) - 1).pow(2).mean() + (torch.diagonal(c2) - 1).pow(2).mean())).sqrt()
    off = (0.5 * (off_diagonal(c1).pow(2).mean() + off_diagonal(c2).pow(2).mean())).sqrt()
    return scale * (0.5 * on + 0.5 * off)


class All4One(SSLMethod):
    """Online projector + two predictors + centroid encoder; momentum backbone + projector feed the queue."""

    Args = All4OneArgs

    def __init__(self, backbone: nn.Module, feature_dim: int, args: All4OneArgs) -> None:
        super().__init__()
        self.args = args
        hidden, out, pred = args.proj_hidden_dim, args.proj_output_dim, args.pred_hidden_dim
        self.projector = mlp([feature_dim, hidden, hidden, out], last_bn=True)
        self.predictor = mlp([out, pred, out])           # neighbour term
        self.predictor2 = mlp([out, pred, out])          # first token of the centroid query
        self.centroid = CentroidEncoder(out, args.k, args.centroid_layers, args.centroid_heads, args.centroid_dropout)
        self.momentum_backbone = momentum_copy(backbone)
        self.momentum_projector = momentum_copy(self.projector)
        self.support = SupportQueue(args.queue_size, out)
        self._pending: list[Tensor] = []

    @classmethod
    def view_transforms(cls, args: All4OneArgs, image_size: int) -> list[Transform]:
        """solo-learn's asymmetric views: at CIFAR size (32 px) no blur and solarisation 0.2 on view 2
        (scripts/pretrain/cifar/augmentations/asymmetric.yaml); above it blur 1.0 on view 1, blur 0.1 +
        solarisation 0.2 on view 2 (scripts/pretrain/imagenet-100/augmentations/asymmetric.yaml)."""
        if image_size <= CIFAR_SIZE:
            return [simclr_view(image_size), simclr_view(image_size, solarize=0.2)]
        return byol_views(image_size)

    def lr_scales(self) -> dict[nn.Module, float]:
        """The centroid encoder has its own learning rate."""
        return {self.centroid: self.args.centroid_lr_scale}

    def forward(self, backbone: nn.Module, views: list[Tensor]) -> MethodOutput:
        """views: two (N, 3, H, W) batches -> 0.5 L_centroid + 0.5 L_neighbour + 0.5 L_feature (weights in args)."""
        a, k = self.args, self.args.k
        z1, z2 = (self.projector(backbone(v)) for v in views[:2])                   # (N, D) each
        p1, p2 = self.predictor(z1), self.predictor(z2)
        q1, q2 = self.predictor2(z1), self.predictor2(z2)
        with torch.no_grad():
            z1_m, z2_m = (F.normalize(self.momentum_projector(self.momentum_backbone(v)).float(), dim=-1)
                          for v in views[:2])
        _, nn1 = self.support.nearest(z1_m, k)                                      # (N, k, D), nearest first
        _, nn2 = self.support.nearest(z2_m, k)
        c1, c2 = self.centroid(nn1), self.centroid(nn2)                             # targets: [NN1..NNk]
        c1_q = self.centroid(torch.cat([q1[:, None].to(nn1.dtype), nn1[:, :k - 1]], dim=1))  # [pred2(z), NN1..NNk-1]
        c2_q = self.centroid(torch.cat([q2[:, None].to(nn2.dtype), nn2[:, :k - 1]], dim=1))
        centroid = symmetric(nn_contrast, c1, c2_q, c2, c1_q, a.centroid_temperature)
        neighbour = symmetric(nn_contrast, nn1[:, 0], p2, nn2[:, 0], p1, a.temperature)
        feature = feature_contrast(z1_m, z2_m, z1, z2, a.feature_scale)
        loss = a.centroid_weight * centroid + a.neighbour_weight * neighbour + a.feature_weight * feature
        if self.training:
            self._pending.append(z1_m)
        logs = {"centroid": centroid.detach(), "neighbour": neighbour.detach(), "feature": feature.detach()}
        return MethodOutput(loss, logs, z1.detach())

    def after_optimizer_step(self, backbone: nn.Module, progress: Progress) -> None:
        """Enqueue view 1's momentum projections (from every rank), then move the momentum networks."""
        for z1_m in self._pending:
            self.support.push(gather(z1_m))
        self._pending.clear()
        momentum = cosine_momentum(self.args.base_momentum, self.args.final_momentum, progress.fraction)
        ema_update(self.momentum_backbone, backbone, momentum)
        ema_update(self.momentum_projector, self.projector, momentum)
