"""SimCLR (Chen et al. 2020): a shared backbone, an MLP projector and the NT-Xent loss."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pas.core.config import require
from pas.ssl.base import MethodOutput, SSLMethod


@dataclass(frozen=True)
class SimCLRArgs:
    """params.pretrain.method_args.simclr."""

    temperature: float = 0.2
    proj_dim: int = 128

    def validate(self, prefix: str) -> None:
        """Check ranges."""
        require(self.temperature > 0, f"{prefix}.temperature", self.temperature, "use a positive number")
        require(self.proj_dim >= 1, f"{prefix}.proj_dim", self.proj_dim, "use an integer >= 1")


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent: z1, z2 (N, D) project two views of the same N images; returns the mean loss ().

    Every one of the 2N projections must pick its partner out of the other 2N - 1 by cosine
    similarity / temperature (cross-entropy), so the 2(N - 1) other views are the negatives.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)                     # (2N, D)
    logits = z @ z.T / temperature                                          # (2N, 2N)
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))                   # a view is not its own pair
    idx = torch.arange(n, device=z.device)
    targets = torch.cat([idx + n, idx])                                     # (2N,) partner of each row
    return F.cross_entropy(logits, targets)


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
