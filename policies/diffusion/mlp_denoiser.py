"""MLP "skip-net" denoiser over the flattened action chunk (the CPU default; RL-100's Skip-Net analogue).

Glossary: B batch, T horizon, Da action dim, Dc global-cond width (To x per-step feature), W width,
C context width (time embedding + Dc).

    in   = [flatten(x_t) (T*Da) | time-embedding | cond (Dc)]  -> Linear -> h (W)
    block: h = h + Linear(Mish(Linear([LayerNorm(h) | ctx])))      ctx = [time-embedding | cond]
    out  = Linear(Mish(LayerNorm(h))) -> (T*Da) -> (B, T, Da)

Why the context is re-injected into every block ("skip"): with only one input layer the step and the
observation get washed out in deep MLPs; feeding them to every block is what makes a plain MLP a usable
conditional denoiser (DiffAE's MLPSkipNet idea). The residual path keeps deep stacks trainable.

Shared context: the context may have batch 1 while x has batch B (best-of-N candidates share one observation
and one step). Then every layer that reads [h | ctx] is applied as W_h h + (W_ctx ctx + b), the same weights and
the same sum as one Linear over the concatenation, and the context projections (about half of each block's
multiply-adds at the demo size) are computed once instead of B times.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from policies.common.layers import SinusoidalPosEmb, as_step_tensor


def _linear_over_concat(layer: nn.Linear, a: torch.Tensor, ctx: torch.Tensor, wa: int) -> torch.Tensor:
    """layer(cat([a, ctx], -1)) for a (B, wa) and ctx (B, C) or (1, C). With one shared context row the layer is
    applied in two parts, W_a a + (W_ctx ctx + b), and the context part broadcasts over a's rows. With one context
    row per row (training) it stays one matmul over the concatenation: the split form was 10-15% slower to train
    (measured, 512 x 4, batch 256). The branch is on shapes, so an ONNX trace bakes the path its example took.
    wa is a python int (not a.shape[-1]) so that the exported weight slices are constants, folded at export, not
    sliced at every call."""
    if ctx.shape[0] == a.shape[0]:
        return layer(torch.cat([a, ctx], dim=-1))
    return F.linear(a, layer.weight[:, :wa]) + F.linear(ctx, layer.weight[:, wa:], layer.bias)


class _SkipBlock(nn.Module):
    def __init__(self, width: int, ctx_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width + ctx_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.Mish()

    def forward(self, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.act(_linear_over_concat(self.fc1, self.norm(h), ctx, self.fc2.in_features)))


class MLPDenoiser(nn.Module):
    """eps_theta(x_t, t, cond): (B, T, Da), (B,) or int, (B, Dc) -> (B, T, Da). cond may be (1, Dc) with t an
    int or (1,): one context shared by all B rows."""

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
        ctx = torch.cat([self.time_emb(as_step_tensor(t, cond.shape[0], x.device)), cond], dim=-1)  # (B or 1, C)
        h = _linear_over_concat(self.inp, x.reshape(b, -1), ctx, self.horizon * self.action_dim)
        for block in self.blocks:
            h = block(h, ctx)
        return self.out(h).reshape(b, self.horizon, self.action_dim)
