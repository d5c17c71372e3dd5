"""ObsEncoder: obs dict (B, To, ...) -> global condition (B, To * Dz) for the denoiser.

Glossary: B batch, To obs history, Ds concatenated low-dim width, Df per-step feature width
(= sum of camera features + state feature), Dz latent width (= Df without VIB).

Per step: [rgb features of every camera in config order | state feature] -> (optional VIB) -> z;
the To per-step latents are concatenated (older first) into the global condition. Low-dim inputs must
already be normalized (the policy owns the normalizer); images are uint8 and scaled inside RgbEncoder.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from policies.encoders.rgb import RgbEncoder
from policies.encoders.state import StateEncoder
from policies.encoders.vib import ReconHead, VIBHead, gaussian_kl


class EncoderOutput(NamedTuple):
    cond: torch.Tensor  # (B, To * Dz) global condition
    kl: torch.Tensor | None  # (B,) VIB KL summed over To and latent dims; None without VIB
    recon: torch.Tensor | None  # (B, To, Ds) reconstructed normalized low-dim state; None without recon
    state: torch.Tensor | None  # (B, To, Ds) the normalized low-dim state (the recon target)


class ObsEncoder(nn.Module):
    def __init__(self, obs_shapes: dict[str, tuple[int, ...]], low_dim_keys: list[str], image_keys: list[str],
                 n_obs_steps: int, cfg) -> None:  # cfg: policies.diffusion.config.EncoderConfig
        super().__init__()
        self.low_dim_keys, self.image_keys, self.n_obs_steps = list(low_dim_keys), list(image_keys), n_obs_steps
        state_dim = sum(obs_shapes[k][0] for k in self.low_dim_keys)
        self.state = (StateEncoder(state_dim, cfg.state_hidden, cfg.state_feature_dim, cfg.state_encoder)
                      if self.low_dim_keys else None)
        feat_dim = self.state.out_dim if self.state is not None else 0

        def make_rgb() -> RgbEncoder:
            return RgbEncoder(cfg.rgb_channels, cfg.rgb_num_keypoints, cfg.rgb_feature_dim, cfg.rgb_groups,
                              cfg.rgb_crop, cfg.rgb_strides)

        # A shared CNN is stored once (not under every camera key) so the state dict has no aliased tensors,
        # which safetensors refuses to save.
        self.rgb_shared = make_rgb() if cfg.share_rgb_encoder and self.image_keys else None
        self.rgb = nn.ModuleDict({} if self.rgb_shared is not None else {k: make_rgb() for k in self.image_keys})
        feat_dim += cfg.rgb_feature_dim * len(self.image_keys)
        self.vib = VIBHead(feat_dim, cfg.vib_dim or feat_dim) if cfg.vib else None
        self.latent_dim = self.vib.out_dim if self.vib is not None else feat_dim
        self.recon = ReconHead(self.latent_dim, state_dim, cfg.recon_hidden) if cfg.recon else None
        self.out_dim = n_obs_steps * self.latent_dim

    @classmethod
    def for_policy(cls, config) -> ObsEncoder:
        """The encoder of a policy built on a DiffusionPolicyConfig: its low-dim keys and derived features
        (config.state_shapes, in that order) and its cameras."""
        return cls(config.obs_shapes | config.state_shapes, list(config.state_shapes), config.image_keys,
                   config.n_obs_steps, config.encoder)

    def forward(self, obs: dict[str, torch.Tensor], deterministic: bool | None = None) -> EncoderOutput:
        """obs: low-dim keys (B, To, D) normalized float; image keys (B, To, H, W, 3) uint8.

        deterministic=None means "stochastic VIB in train mode, mean in eval mode".
        """
        if deterministic is None:
            deterministic = not self.training
        ref = obs[(self.low_dim_keys or self.image_keys)[0]]
        b, to = ref.shape[:2]
        feats, state = [], None
        for key in self.image_keys:
            img = obs[key]
            net = self.rgb_shared if self.rgb_shared is not None else self.rgb[key]
            feats.append(net(img.reshape(b * to, *img.shape[2:])))
        if self.state is not None:
            state = torch.cat([obs[k] for k in self.low_dim_keys], dim=-1)  # (B, To, Ds)
            feats.append(self.state(state.reshape(b * to, -1)))
        feat = torch.cat(feats, dim=-1)  # (B*To, Df)
        kl = None
        if self.vib is not None:
            feat, mu, logvar = self.vib(feat, deterministic)
            kl = gaussian_kl(mu, logvar).reshape(b, to).sum(-1)
        recon = self.recon(feat).reshape(b, to, -1) if self.recon is not None else None
        return EncoderOutput(feat.reshape(b, to * self.latent_dim), kl, recon, state)
