"""SimCLR (Chen et al. 2020): a shared backbone, an MLP projector and the NT-Xent loss."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from pas.pretrain import PretrainConfig


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


class SimCLR(nn.Module):
    """Projector head + NT-Xent over two views; the backbone is passed in, not owned."""

    def __init__(self, feature_dim: int, proj_dim: int = 128, temperature: float = 0.2,
                 hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden = hidden_dim or feature_dim
        self.temperature = temperature
        self.projector = nn.Sequential(
            nn.Linear(feature_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, proj_dim),
        )

    @classmethod
    def from_config(cls, backbone: nn.Module, feature_dim: int, cfg: PretrainConfig) -> SimCLR:
        """Build the heads for `backbone` (feature_dim outputs) from the pretrain config."""
        return cls(feature_dim, proj_dim=cfg.proj_dim, temperature=cfg.temperature)

    def forward(self, backbone: nn.Module, view1: Tensor, view2: Tensor) -> dict[str, Tensor]:
        """view1, view2 (N, 3, H, W) -> {"loss": ()}."""
        n = view1.shape[0]
        features = backbone(torch.cat([view1, view2]))                      # (2N, F)
        z = self.projector(features)                                        # (2N, P)
        return {"loss": nt_xent(z[:n], z[n:], self.temperature)}
