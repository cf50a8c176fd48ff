"""SwAV (Caron et al. 2020): online clustering. Codes of the assignment crops come from a balanced Sinkhorn-Knopp
partition over learnable prototypes; every other crop predicts them (swapped prediction), with multi-crop, a
feature queue for small batches and the prototypes frozen during the first epoch.

Official code: facebookresearch/swav at 04b8f431 (main_swav.py, src/resnet50.py, src/multicropdataset.py,
scripts/swav_200ep_bs256_pretrain.sh); the comments cite file:line. Its optimiser (LARC SGD, base_lr 4.8 for batch
4096 or 0.6 for 256, final_lr 0.0006, wd 1e-6, main_swav.py:81-87,167-178) is pas's pretrain.optimizer=lars with
those values (README "Pretraining").
"""
from __future__ import annotations

import functools
from itertools import groupby

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pas.ssl.args import SwAVArgs
from pas.ssl.augment import STRONG_JITTER, simclr_view
from pas.ssl.base import MethodOutput, Progress, SSLMethod, Transform
from pas.ssl.dist import world_size


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float, iterations: int) -> Tensor:
    """Codes (B, K) for prototype scores (B, K): each row a distribution over prototypes, the prototypes used
    equally across the (global) batch. Sums over the batch are all-reduced across ranks, as in the official
    distributed_sinkhorn (main_swav.py:304-305,351-370: exp(scores / epsilon), alternate row and column scaling)."""
    q = torch.exp(scores.float() / epsilon).t()                                 # (K, B)
    batch = q.shape[1] * world_size()
    prototypes = q.shape[0]
    q /= _sum_over_ranks(q.sum())
    for _ in range(iterations):
        q /= _sum_over_ranks(q.sum(dim=1, keepdim=True))                         # each prototype: total 1/K
        q /= prototypes
        q /= q.sum(dim=0, keepdim=True)                                          # each sample: total 1/B
        q /= batch
    return (q * batch).t()                                                       # rows sum to 1


def _sum_over_ranks(x: Tensor) -> Tensor:
    if world_size() == 1:
        return x
    import torch.distributed as dist

    dist.all_reduce(x)
    return x


def swapped_prediction(scores: list[Tensor], codes: list[Tensor], assign: list[int], temperature: float) -> Tensor:
    """SwAV loss (): for each assignment crop i (codes[i] (B, K)), every other crop's scores (B, K) / temperature
    predict its codes by cross-entropy; averaged over the other crops, then over the assignment crops
    (main_swav.py:307-313)."""
    total = 0.0
    for q, crop in zip(codes, assign):
        others = [v for v in range(len(scores)) if v != crop]
        sub = sum(-(q * F.log_softmax(scores[v].float() / temperature, dim=1)).sum(dim=1).mean() for v in others)
        total = total + sub / len(others)
    return total / len(assign)


class SwAV(SSLMethod):
    """Backbone + projection head (L2-normalised) + prototypes (a bias-free linear layer kept on the unit sphere):
    src/resnet50.py:205-217,302-305."""

    Args = SwAVArgs
    assign_crops = (0, 1)            # codes are computed on the two global crops

    def __init__(self, backbone: nn.Module, feature_dim: int, args: SwAVArgs) -> None:
        super().__init__()
        self.args = args
        self.projection_head = nn.Sequential(
            nn.Linear(feature_dim, args.hidden_mlp), nn.BatchNorm1d(args.hidden_mlp), nn.ReLU(inplace=True),
            nn.Linear(args.hidden_mlp, args.feat_dim))
        self.prototypes = nn.Linear(args.feat_dim, args.nmb_prototypes, bias=False)
        length = args.queue_length // max(1, world_size())
        self.register_buffer("queue", torch.zeros(len(self.assign_crops), length, args.feat_dim))
        self.register_buffer("queue_used", torch.zeros((), dtype=torch.bool))
        self.register_buffer("epoch", torch.zeros(()))

    @classmethod
    def view_transforms(cls, args: SwAVArgs, image_size: int) -> list[Transform]:
        """Two global crops and `local_crops` small ones; strong colour distortion and blur (p 0.5) on every crop,
        no solarisation (src/multicropdataset.py:39,67-78)."""
        view = functools.partial(simclr_view, blur=0.5, jitter=STRONG_JITTER)
        return [*[view(image_size, args.global_crop_scale) for _ in range(2)],
                *[view(args.local_crop_size, args.local_crop_scale) for _ in range(args.local_crops)]]

    def embed(self, backbone: nn.Module, views: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """(unit embeddings (B, feat_dim), prototype scores (B, K)) per view, one backbone pass per resolution."""
        with torch.no_grad():  # prototypes on the unit sphere before every step (main_swav.py:275-279)
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        n, embeddings = views[0].shape[0], []
        for _, group in groupby(views, key=lambda v: v.shape[-2:]):
            group = list(group)
            embeddings += list(F.normalize(self.projection_head(backbone(torch.cat(group))), dim=1).split(n))
        return embeddings, [self.prototypes(e) for e in embeddings]

    def forward(self, backbone: nn.Module, views: list[Tensor]) -> MethodOutput:
        """views: 2 global (N, 3, S, S) then local (N, 3, s, s) batches -> the swapped-prediction loss."""
        embeddings, scores = self.embed(backbone, views)
        use_queue = self.queue.shape[1] > 0 and float(self.epoch) >= self.args.epoch_queue_starts
        codes = []
        for i, crop in enumerate(self.assign_crops):
            with torch.no_grad():
                out = scores[crop].detach()
                # main_swav.py:293-302: scores of the queued embeddings join once the queue is full
                if use_queue and (bool(self.queue_used) or not bool((self.queue[i, -1] == 0).all())):
                    out = torch.cat([self.queue[i] @ self.prototypes.weight.t(), out])
                    self.queue_used.fill_(True)
                codes.append(sinkhorn(out, self.args.epsilon, self.args.sinkhorn_iterations)[-len(scores[crop]):])
                if use_queue and self.training:
                    self.queue[i] = torch.cat([embeddings[crop].detach(), self.queue[i]])[: self.queue.shape[1]]
        loss = swapped_prediction(scores, codes, list(self.assign_crops), self.args.temperature)
        return MethodOutput(loss, {"queue": float(use_queue)}, embeddings[0].detach())

    def before_optimizer_step(self, progress: Progress) -> None:
        """Keep the prototypes fixed during the first freeze_prototypes_epochs."""
        if progress.epoch < self.args.freeze_prototypes_epochs:
            self.prototypes.weight.grad = None

    def after_optimizer_step(self, backbone: nn.Module, progress: Progress) -> None:
        """Track the epoch for the queue start and the prototype freeze."""
        self.epoch.fill_(progress.epoch)
