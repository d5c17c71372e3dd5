"""MLP "skip-net" denoiser over the flattened action chunk (the CPU default; RL-100's Skip-Net analogue).

Glossary: B batch, T horizon, Da action dim, Dc global-cond width (To x per-step feature), W width.

    in   = [flatten(x_t) (T*Da) | time-embedding | cond (Dc)]  -> Linear -> h (W)
    block: h = h + Linear(Mish(Linear([LayerNorm(h) | ctx])))      ctx = [time-embedding | cond]
    out  = Linear(Mish(LayerNorm(h))) -> (T*Da) -> (B, T, Da)

Why the context is re-injected into every block ("skip"): with only one input layer the step and the
observation get washed out in deep MLPs; feeding them to every block is what makes a plain MLP a usable
conditional denoiser (DiffAE's MLPSkipNet idea). The residual path keeps deep stacks trainable.
"""

from __future__ import annotations

import torch
from torch import nn

from policies.common.layers import SinusoidalPosEmb, as_step_tensor


class _SkipBlock(nn.Module):
    def __init__(self, width: int, ctx_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width + ctx_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.Mish()

    def forward(self, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.act(self.fc1(torch.cat([self.norm(h), ctx], dim=-1))))


class MLPDenoiser(nn.Module):
    """eps_theta(x_t, t, cond): (B, T, Da), (B,) or int, (B, Dc) -> (B, T, Da)."""

    def __init__(self, horizon: int, action_dim: int, cond_dim: int,
                 width: int = 256, depth: int = 3, time_dim: int = 64):
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        flat = horizon * action_dim
        self.time_emb = nn.Sequential(SinusoidalPosEmb(time_dim), nn.Linear(time_dim, 2 * time_dim), nn.Mish(),
                                      nn.Linear(2 * time_dim, time_dim))
        ctx_dim = time_dim + cond_dim
        self.inp = nn.Linear(flat + ctx_dim, width)
        self.blocks = nn.ModuleList(_SkipBlock(width, ctx_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Mish(), nn.Linear(width, flat))

    def forward(self, x: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        ctx = torch.cat([self.time_emb(as_step_tensor(t, b, x.device)), cond], dim=-1)
        h = self.inp(torch.cat([x.reshape(b, -1), ctx], dim=-1))
        for block in self.blocks:
            h = block(h, ctx)
        return self.out(h).reshape(b, self.horizon, self.action_dim)
