"""RL-100 encoder regularizers (rl100.md §3): variational information bottleneck + reconstruction head.

Glossary: N = B * To per-step features, D feature width, Dz latent width, Ds low-dim state width.

VIB: feature -> (mu, logvar); z = mu + exp(logvar/2) * eps while training (stochastic), z = mu otherwise or
when `deterministic=True`. Why the switch: PPO ratios must be exactly 1 before an update, which breaks if z is
re-sampled between rollout and update (rl100.md §12 pitfalls).
KL(N(mu, sigma^2) || N(0, I)) is summed over latent dims (per sample), as in the RL-100 code.
"""

from __future__ import annotations

import torch
from torch import nn

from policies.common.layers import mlp

LOGVAR_RANGE = (-10.0, 10.0)  # keeps exp(logvar) finite early in training


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) summed over the last dim: (..., Dz) -> (...)."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)


class VIBHead(nn.Module):
    """(N, D) -> z (N, Dz), mu (N, Dz), logvar (N, Dz)."""

    def __init__(self, in_dim: int, latent_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, 2 * latent_dim)
        self.out_dim = latent_dim

    def forward(self, feat: torch.Tensor, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.proj(feat).chunk(2, dim=-1)
        logvar = logvar.clamp(*LOGVAR_RANGE)
        if deterministic:
            return mu, mu, logvar
        return mu + (0.5 * logvar).exp() * torch.randn_like(mu), mu, logvar


class ReconHead(nn.Module):
    """Decoder from the per-step latent back to the normalized low-dim state: (N, Dz) -> (N, Ds)."""

    def __init__(self, latent_dim: int, state_dim: int, hidden: tuple[int, ...] = (256,)):
        super().__init__()
        self.net = mlp(latent_dim, hidden, state_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
