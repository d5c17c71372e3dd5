"""Low-dim state encoder: normalized concatenated low-dim keys (N, Ds) -> (N, D).

N = B * To (steps are encoded independently and concatenated later).
"""

from __future__ import annotations

import torch
from torch import nn

from policies.common.layers import mlp


class StateEncoder(nn.Module):
    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (256,), out_dim: int = 64, kind: str = "mlp"):
        super().__init__()
        if kind == "identity":  # diffusion_policy low-dim: the normalized state is the feature
            self.net: nn.Module = nn.Identity()
            self.out_dim = in_dim
        else:
            self.net = mlp(in_dim, hidden, out_dim)
            self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
