"""Denoiser factory: config -> eps_theta(x_t (B,T,Da), t (B,), cond (B,Dc)) -> (B,T,Da)."""

from __future__ import annotations

from torch import nn

from policies.diffusion.config import DenoiserConfig
from policies.diffusion.mlp_denoiser import MLPDenoiser
from policies.diffusion.unet1d import ConditionalUnet1D

__all__ = ["ConditionalUnet1D", "MLPDenoiser", "build_denoiser"]


def build_denoiser(cfg: DenoiserConfig, horizon: int, action_dim: int, cond_dim: int) -> nn.Module:
    if cfg.kind == "mlp":
        return MLPDenoiser(horizon, action_dim, cond_dim, width=cfg.mlp_width, depth=cfg.mlp_depth,
                           time_dim=cfg.mlp_time_dim)
    return ConditionalUnet1D(action_dim, cond_dim, down_dims=cfg.unet_down_dims, kernel_size=cfg.unet_kernel_size,
                             n_groups=cfg.unet_n_groups, step_embed_dim=cfg.unet_step_embed_dim)
