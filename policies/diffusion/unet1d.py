"""ConditionalUnet1D (diffusion_policy's temporal CNN denoiser), written from its description.

Glossary: B batch, T horizon, Da action dim, Dc global-cond width, C channels, L = len(down_dims).

Structure (rti_consistency.md §3.2):
- cond = [SinusoidalPosEmb(dsed) -> Linear(dsed, 4 dsed) -> Mish -> Linear(4 dsed, dsed)] ++ global cond
- residual block = Conv1d-GroupNorm-Mish, FiLM (per-channel scale & bias from Mish -> Linear(cond, 2C)),
  Conv1d-GroupNorm-Mish, plus a 1x1 conv on the residual path when the width changes
- down path: per level 2 residual blocks, then a stride-2 conv (not on the last level)
- 2 mid blocks; up path: per level concat the skip, 2 residual blocks, transposed conv x2 (L-1 levels)
- head: Conv1d-GroupNorm-Mish + 1x1 conv back to Da
As in the reference, the up path consumes the skips of levels L-1..1; the full-resolution level-0 skip is
not concatenated (keeps param counts comparable with published numbers).
T must be divisible by 2**(L-1).
"""

from __future__ import annotations

import torch
from torch import nn

from policies.common.layers import SinusoidalPosEmb, as_step_tensor


def _conv_norm_act(c_in: int, c_out: int, k: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(c_in, c_out, k, padding=k // 2), nn.GroupNorm(groups, c_out), nn.Mish())


class FiLMResBlock1D(nn.Module):
    """(B, C_in, T), (B, Dcond) -> (B, C_out, T)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, k: int, groups: int):
        super().__init__()
        self.conv1 = _conv_norm_act(c_in, c_out, k, groups)
        self.conv2 = _conv_norm_act(c_out, c_out, k, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.conv2(scale * h + bias)
        return h + self.skip(x)


class _Level(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond_dim: int, k: int, groups: int, resample: nn.Module):
        super().__init__()
        self.res1 = FiLMResBlock1D(c_in, c_out, cond_dim, k, groups)
        self.res2 = FiLMResBlock1D(c_out, c_out, cond_dim, k, groups)
        self.resample = resample


class ConditionalUnet1D(nn.Module):
    """eps_theta(x_t, t, cond): (B, T, Da), (B,) or int, (B, Dc) -> (B, T, Da). cond may be (1, Dc) with t an int
    or (1,): one context shared by all B rows."""

    def __init__(self, action_dim: int, cond_dim: int, down_dims: tuple[int, ...] = (64, 128, 256),
                 kernel_size: int = 5, n_groups: int = 8, step_embed_dim: int = 128):
        super().__init__()
        d = step_embed_dim
        self.step_emb = nn.Sequential(SinusoidalPosEmb(d), nn.Linear(d, 4 * d), nn.Mish(), nn.Linear(4 * d, d))
        cdim = d + cond_dim
        k, g = kernel_size, n_groups
        widths = [action_dim, *down_dims]
        n = len(down_dims)
        self.down = nn.ModuleList(
            _Level(widths[i], widths[i + 1], cdim, k, g,
                   nn.Conv1d(widths[i + 1], widths[i + 1], 3, stride=2, padding=1) if i < n - 1 else nn.Identity())
            for i in range(n))
        self.mid = nn.ModuleList(FiLMResBlock1D(down_dims[-1], down_dims[-1], cdim, k, g) for _ in range(2))
        # up level j goes from width down_dims[n-1-j] (plus the same-width skip) to down_dims[n-2-j]
        self.up = nn.ModuleList(
            _Level(2 * down_dims[i + 1], down_dims[i], cdim, k, g,
                   nn.ConvTranspose1d(down_dims[i], down_dims[i], 4, stride=2, padding=1))
            for i in reversed(range(n - 1)))
        self.head = nn.Sequential(_conv_norm_act(down_dims[0], down_dims[0], k, g),
                                  nn.Conv1d(down_dims[0], action_dim, 1))

    def forward(self, x: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # cond (1, Dc) with t an int or (1,) is one context shared by all rows (best-of-N): FiLM broadcasts it
        c = torch.cat([self.step_emb(as_step_tensor(t, cond.shape[0], x.device)), cond], dim=-1)
        h = x.transpose(1, 2)  # (B, Da, T): channels = action dims, length = time
        skips = []
        for lvl in self.down:
            h = lvl.res2(lvl.res1(h, c), c)
            skips.append(h)
            h = lvl.resample(h)
        for blk in self.mid:
            h = blk(h, c)
        for lvl in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = lvl.resample(lvl.res2(lvl.res1(h, c), c))
        return self.head(h).transpose(1, 2)
