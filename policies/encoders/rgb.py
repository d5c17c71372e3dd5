"""Small RGB CNN with GroupNorm and a spatial-softmax keypoint head (one camera).

Glossary: N images (= B * To), H/W image size, C channels, K keypoints, D feature width.
Input: (N, H, W, 3) uint8 as stored in the episode store; scaled to [-1, 1] here so callers never
normalize images themselves. GroupNorm (not BatchNorm) because EMA weights and small/odd batches make
BatchNorm's running stats unreliable (diffusion_policy swaps BatchNorm for GroupNorm for the same reason).
"""

from __future__ import annotations

import torch
from torch import nn


class SpatialSoftmax(nn.Module):
    """(N, C, H, W) -> (N, 2K): expected (x, y) in [-1, 1] of K learned keypoint heat maps."""

    def __init__(self, in_channels: int, num_keypoints: int):
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, num_keypoints, 1)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        n, _, h, w = feat.shape
        logits = self.keypoints(feat).flatten(2) / self.log_temperature.exp()  # (N, K, H*W)
        attn = logits.softmax(dim=-1)
        ys = torch.linspace(-1.0, 1.0, h, device=feat.device, dtype=feat.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=feat.device, dtype=feat.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        ex = (attn * grid_x.reshape(1, 1, -1)).sum(-1)
        ey = (attn * grid_y.reshape(1, 1, -1)).sum(-1)
        return torch.stack([ex, ey], dim=-1).reshape(n, -1)


class RgbEncoder(nn.Module):
    """(N, H, W, 3) uint8 -> (N, D)."""

    def __init__(self, channels: tuple[int, ...] = (32, 32, 32), num_keypoints: int = 32, out_dim: int = 64,
                 groups: int = 8, crop: tuple[int, ...] | None = None, strides: tuple[int, ...] | None = None):
        super().__init__()
        strides = tuple(strides) if strides is not None else (2,) + (1,) * (len(channels) - 1)
        if len(strides) != len(channels):
            raise ValueError(f"RgbEncoder: {len(channels)} conv widths but {len(strides)} strides")
        layers: list[nn.Module] = []
        c_in = 3
        for c, stride in zip(channels, strides):
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1), nn.GroupNorm(groups, c), nn.Mish()]
            c_in = c
        self.cnn = nn.Sequential(*layers)
        self.pool = SpatialSoftmax(c_in, num_keypoints)
        self.proj = nn.Linear(2 * num_keypoints, out_dim)
        self.crop = tuple(crop) if crop is not None else None
        self.out_dim = out_dim

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = img.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0  # (N, 3, H, W) in [-1, 1]
        if self.crop is not None:
            x = self._crop(x)
        return self.proj(self.pool(self.cnn(x)))

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        ch, cw = self.crop
        h, w = x.shape[-2:]
        if ch > h or cw > w:
            raise ValueError(f"rgb_crop {self.crop} is larger than the image ({h}, {w})")
        if self.training:  # one random offset per image: the augmentation diffusion_policy uses
            top = torch.randint(0, h - ch + 1, (x.shape[0],), device=x.device)
            left = torch.randint(0, w - cw + 1, (x.shape[0],), device=x.device)
            rows = (top[:, None] + torch.arange(ch, device=x.device))[:, None, :, None]
            cols = (left[:, None] + torch.arange(cw, device=x.device))[:, None, None, :]
            idx = torch.arange(x.shape[0], device=x.device)[:, None, None, None]
            return x[idx, torch.arange(3, device=x.device)[None, :, None, None], rows, cols]
        top, left = (h - ch) // 2, (w - cw) // 2
        return x[..., top:top + ch, left:left + cw]
