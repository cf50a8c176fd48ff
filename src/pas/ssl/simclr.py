"""SimCLR (Chen et al. 2020): a shared backbone, an MLP projector and the NT-Xent loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pas.ssl.args import SimCLRArgs
from pas.ssl.base import MethodOutput, SSLMethod
from pas.ssl.dist import gather, mean_over_ranks, rank, world_size


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent: z1, z2 (N, D) project two views of the same N images; returns the mean loss ().

    Every one of the 2N projections must pick its partner out of the other 2N - 1 by cosine
    similarity / temperature (cross-entropy), so the 2(N - 1) other views are the negatives.
    Under DDP the negatives are every rank's (2 x global batch - 2): this rank's rows are scored
    against the projections gathered from all ranks with gradients, and the mean over ranks is the
    global batch's loss, as google-research/simclr objective.py add_contrastive_loss (lines 38-90,
    tpu_cross_replica_concat and labels offset by replica_id * batch_size) computes it.
    """
    n, r = z1.shape[0], rank()
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)                     # (2n, D) this rank's
    if world_size() == 1:
        keys, width, offset = z, n, 0
    else:
        width, offset = n * world_size(), r * n                           # gathered: [z1 of all; z2 of all]
        keys = torch.cat([gather(z[:n]), gather(z[n:])])                    # (2Wn, D) gradients flow back
    logits = z @ keys.T / temperature                                       # (2n, 2Wn)
    idx = torch.arange(n, device=z.device) + offset
    own = torch.cat([idx, idx + width])                                     # (2n,) column of the row itself
    logits = logits.masked_fill(F.one_hot(own, 2 * width).bool(), float("-inf"))   # not its own pair
    targets = torch.cat([idx + width, idx])                                 # (2n,) partner of each row
    return mean_over_ranks(F.cross_entropy(logits, targets))


class SimCLR(SSLMethod):
    """Projector head + NT-Xent over two views; the backbone is passed in, not owned."""

    Args = SimCLRArgs

    def __init__(self, backbone: nn.Module, feature_dim: int, args: SimCLRArgs) -> None:
        super().__init__()
        self.temperature = args.temperature
        self.projector = nn.Sequential(
            nn.Linear(feature_dim, feature_dim, bias=False),
            nn.BatchNorm1d(feature_dim),
            nn.ReLU(inplace=True),
            nn.Linear(feature_dim, args.proj_dim),
        )

    def forward(self, backbone: nn.Module, views: list[Tensor]) -> MethodOutput:
        """views: two (N, 3, H, W) batches -> NT-Xent of their projections."""
        n = views[0].shape[0]
        z = self.projector(backbone(torch.cat(views[:2])))                   # (2N, P)
        loss = nt_xent(z[:n], z[n:], self.temperature)
        return MethodOutput(loss, {}, z[:n].detach())
