"""All4One's centroid module: a small Transformer encoder that summarises a sequence of neighbours."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def sinusoidal_encoding(tokens: int, dim: int) -> Tensor:
    """Fixed 1-D sinusoidal encoding (tokens, dim), exactly as the official All4One code applies it.

    The authors add `Summer(PositionalEncodingPermute1D(5))` (package positional-encodings) to a
    (B, 5, D) sequence. That module treats the D feature entries as positions p and the 5 tokens
    as channels, so token j gets channel j of an interleaved sin/cos encoding over p:
    j = 2i -> sin(p * w_i), j = 2i + 1 -> cos(p * w_i), with w_i = 10000^(-2i / C) and C = tokens
    rounded up to even.
    """
    channels = 2 * ((tokens + 1) // 2)
    freqs = 1.0 / 10000 ** (torch.arange(0, channels, 2, dtype=torch.float32) / channels)   # (C/2,)
    angles = torch.arange(dim, dtype=torch.float32)[:, None] * freqs[None, :]             # (D, C/2)
    table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)                  # (D, C) interleaved
    return table[:, :tokens].T.contiguous()                                               # (tokens, D)


class CentroidEncoder(nn.Module):
    """TransformerEncoder (batch first) over positionally encoded sequences; the centroid is token 0's output."""

    def __init__(self, dim: int, tokens: int, layers: int = 3, heads: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=dim, nhead=heads, dim_feedforward=2 * dim, dropout=dropout,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.register_buffer("position", sinusoidal_encoding(tokens, dim), persistent=False)

    def forward(self, sequence: Tensor) -> Tensor:
        """(B, T, D) -> centroid (B, D)."""
        return self.encoder(sequence + self.position.to(sequence.dtype))[:, 0]
