"""StableRep (Tian et al. 2023): images generated from one prompt are positives of each other.

A batch holds groups of `images_per_prompt` (m) views: m images of one prompt, one augmented view each,
or, for an image without prompt siblings (retrieved), m augmented views of that image
(pas.ssl.groups builds them). Every view is projected by a 3-layer MLP and the multi-positive
contrastive loss asks each view to spread its softmax over the other views of its group, as
google-research/syn-rep-learn computes it (MultiPosConLoss: StableRep/models/losses.py; the line numbers
cited here are of the same file at its first path, models/losses.py, commit 94af9fe).

One difference: the official training loop labels the i-th caption of a batch i + batch x rank
(StableRep/main_stablerep.py train_one_epoch, `label_input`), one caption per item, and
MultiPosConLoss caches its mask across batches (losses.py:79). pas cuts a prompt with more than m
images into several groups and labels a group by its prompt, so two groups of one prompt in a batch
are positives of each other; the mask is therefore computed for every batch.

The official learning rate counts a batch in images: lr = blr x captions x n_img / 256 x num_crop / 2
(StableRep/main_stablerep.py, `args.lr = args.blr * eff_batch_size * args.n_img / 256` and `* args.num_crop / 2`,
num_crop 1 by default); pas's linear rule counts groups (pretrain.batch_size is groups here, the official
--batch_size is captions), so the official blr is pretrain.lr x 2 / m (README.md: --blr 2.0e-4 with --n_img 6
is pretrain.lr 6.0e-4).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pas.ssl.args import StableRepArgs
from pas.ssl.base import MethodOutput, SSLMethod, Transform
from pas.ssl.dist import gather, mean_over_ranks, rank, world_size
from pas.ssl.views import ViewSpec

# StableRep/main_stablerep.py's strong augmentation: RandomResizedCrop(scale=(0.08, 1)), ColorJitter(0.4, 0.4, 0.4,
# 0.1) with p 0.8, RandomGrayscale(0.2), GaussianBlur([.1, 2.]) with p 0.5, RandomHorizontalFlip
STABLEREP_JITTER = (0.4, 0.4, 0.4, 0.1)
STABLEREP_BLUR = 0.5


def multi_pos_con_loss(feats: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Multi-positive contrastive loss of (N, D) features whose rows share a positive set when they share a label.

    As StableRep/models/losses.py MultiPosConLoss.forward (lines 64-106 at 94af9fe) computes it: features L2-
    normalised; logits against the features of every rank (gathered with gradients) over temperature, a row's own
    column masked by -1e9 and the row's maximum subtracted; the target distribution is the row's positives (same
    label, itself excluded) normalised to sum 1 (a row without positives has an all-zero target, clamped sum 1);
    the loss is the cross-entropy of that target against the log-softmax, averaged over rows. The mean over ranks
    is the global batch's loss (pas's convention, as SimCLR's nt_xent).
    """
    feats = F.normalize(feats.float(), dim=-1, p=2)
    n, offset = feats.shape[0], rank() * feats.shape[0]
    all_feats = gather(feats)                                              # (W n, D) gradients flow back
    with torch.no_grad():
        all_labels = gather(labels.contiguous()) if world_size() > 1 else labels
    # losses.py:79-91 build the masks once per local batch size (its labels never change); prompt labels do
    mask = torch.eq(labels.view(-1, 1), all_labels.view(1, -1)).float()   # losses.py:80-81
    self_column = torch.arange(n, device=feats.device) + offset
    logits_mask = torch.ones_like(mask).scatter(1, self_column.view(-1, 1), 0.0)   # losses.py:82-88
    mask = mask * logits_mask                                              # losses.py:91
    logits = feats @ all_feats.T / temperature                            # losses.py:96
    logits = logits - (1 - logits_mask) * 1e9                              # losses.py:97
    logits = logits - logits.max(dim=-1, keepdim=True).values.detach()     # stablize_logits, losses.py:29-32
    p = mask / mask.sum(1, keepdim=True).clamp(min=1.0)                    # losses.py:103
    loss = -(p * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()        # compute_cross_entropy, losses.py:23-26
    return mean_over_ranks(loss)


def stablerep_view(size: int) -> ViewSpec:
    """The official strong augmentation of one view (StableRep/main_stablerep.py, the `else` of `args.weak_aug`)."""
    return ViewSpec(size, scale=(0.08, 1.0), jitter=STABLEREP_JITTER, blur=STABLEREP_BLUR)


class StableRep(SSLMethod):
    """A 3-layer MLP projector (BatchNorm per view) + the multi-positive contrastive loss over groups of m views."""

    Args = StableRepArgs

    def __init__(self, backbone: nn.Module, feature_dim: int, args: StableRepArgs) -> None:
        super().__init__()
        self.temperature = args.temperature
        # StableRep/models/StableRep.py VisionEncoder.image_mlp (lines 37-45): Linear-BN-ReLU x 2, then Linear; its
        # SyncBatchNorm is pretrain's layer_sync (pas.ssl.syncbn) under DDP
        self.projector = nn.Sequential(
            nn.Linear(feature_dim, args.mlp_dim),
            nn.BatchNorm1d(args.mlp_dim),
            nn.ReLU(inplace=True),
            nn.Linear(args.mlp_dim, args.mlp_dim),
            nn.BatchNorm1d(args.mlp_dim),
            nn.ReLU(inplace=True),
            nn.Linear(args.mlp_dim, args.proj_dim),
        )

    @classmethod
    def view_transforms(cls, args: Any, image_size: int) -> list[Transform]:
        """m views of the official augmentation: view j of a group is its j-th image (or j-th crop of a lone one)."""
        return [stablerep_view(image_size) for _ in range(args.images_per_prompt)]

    def forward(self, backbone: nn.Module, views: list[Tensor], labels: Tensor | None = None) -> MethodOutput:
        """views: m (N, 3, H, W) batches, view j of group i in views[j][i]; labels (N,): group i's prompt id
        (groups sharing a prompt are positives too). Without labels every group is its own (a plain multi-crop)."""
        n = views[0].shape[0]
        if labels is None:
            labels = torch.arange(n, device=views[0].device) + rank() * n
        features = backbone(torch.cat(views))
        # separate BatchNorm statistics per view, as StableRep/models/StableRep.py forward (lines 52-57) projects
        z = torch.cat([self.projector(chunk) for chunk in features.split(n)])   # (m N, P), view-major
        loss = multi_pos_con_loss(z, labels.to(z.device).repeat(len(views)), self.temperature)   # StableRep.py:65
        return MethodOutput(loss, {}, z[:n].detach())
