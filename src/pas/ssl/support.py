"""The support set of NNCLR and All4One: a FIFO queue of L2-normalised embeddings + exact kNN."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SupportQueue(nn.Module):
    """FIFO queue (size, dim) of unit vectors, filled batch by batch; the oldest batch is replaced first.

    It starts as random unit vectors (as in solo-learn) and lives in buffers, so it is saved in
    checkpoints and moves with the module. The size must be a multiple of the pushed batch.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        """Number of slots."""
        return self.queue.shape[0]

    @torch.no_grad()
    def push(self, z: Tensor) -> None:
        """Write the (B, D) batch `z` over the oldest B entries; B must divide the queue size."""
        batch = z.shape[0]
        if self.size % batch:
            raise ValueError(f"support queue of {self.size} is not a multiple of the batch of {batch}")
        start = int(self.ptr)
        self.queue[start:start + batch] = z.to(self.queue.dtype)
        self.ptr.fill_((start + batch) % self.size)

    @torch.no_grad()
    def nearest(self, z: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """z (B, D) unit vectors -> indices (B, k) and entries (B, k, D) of the top-k by dot product, best first."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            sims = z.float() @ self.queue.float().T                          # (B, S)
        index = sims.topk(k, dim=1).indices                                 # (B, k)
        return index, self.queue[index]
