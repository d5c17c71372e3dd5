"""Small layers shared by denoisers and encoders.

Glossary: B batch, D feature width.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalPosEmb(nn.Module):
    """Diffusion-step embedding: (B,) int/float steps -> (B, dim) [sin | cos] features."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"SinusoidalPosEmb dim must be even and >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        # Geometric frequency ladder from 1 down to 1/10000, as in the transformer position code.
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
        args = t.to(torch.float32)[:, None] * freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, act: type[nn.Module] = nn.Mish) -> nn.Sequential:
    """Linear-act stack; no activation after the last layer."""
    dims = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def as_step_tensor(t: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """Broadcast a diffusion step (python int, 0-d or (B,) tensor) to a (B,) long tensor."""
    if not torch.is_tensor(t):
        t = torch.tensor(t)
    t = t.to(device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"diffusion step must be a scalar or shape ({batch},), got {tuple(t.shape)}")
    return t.long()
