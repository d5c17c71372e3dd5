"""MLPBCPolicy: obs window (B, To, ...) -> action chunk (B, T, Da) by one forward pass (regression BC).

Glossary: B batch, To obs history, T horizon (predicted chunk), Ta executed actions, Da action dim,
Dc encoder output width (To x per-step feature), W head width.

    cond = ObsEncoder(normalize(obs))                     (B, Dc)   same encoder as the diffusion policy
    head = [Linear(Dc|W, W) -> Mish] x depth -> Linear(W, T*Da)     plain MLP, no noise or time input
    chunk = unnormalize(head(cond)) ; executed = chunk[action_start : action_start + Ta]

Interface (as DiffusionPolicy, so robotstack.eval.rollout.evaluate runs it unchanged):
    compute_loss(batch) -> (loss, metrics)            batch = {"obs": {key: (B, To, ...)}, "action": (B, T, Da)}
    predict_action(obs, sampler, steps, generator) -> ActionPrediction(action (B, Ta, Da), chunk (B, T, Da))
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from policies.bc.config import MLPBCConfig
from policies.bc.loss import chunk_mse
from policies.common.normalizer import policy_normalizer
from policies.common.obs_check import check_obs
from policies.diffusion.model import ACTION_KEY, ActionPrediction
from policies.encoders import derived
from policies.encoders.obs_encoder import ObsEncoder


class MLPBCPolicy(nn.Module):
    def __init__(self, config: MLPBCConfig):
        super().__init__()
        self.config = config
        c = config.base
        self.normalizer = policy_normalizer(c)
        self.obs_encoder = ObsEncoder.for_policy(c)
        layers: list[nn.Module] = []
        width_in = self.obs_encoder.out_dim
        for _ in range(config.depth):
            layers += [nn.Linear(width_in, config.width), nn.Mish()]
            width_in = config.width
        layers.append(nn.Linear(width_in, c.horizon * c.action_dim))
        self.head = nn.Sequential(*layers)

    @property
    def executed_slice(self) -> slice:
        s = self.config.action_start
        return slice(s, s + self.config.n_action_steps)

    def fit_normalizer(self, data: Mapping[str, np.ndarray]) -> None:
        """Fit stats from arrays {"action": (N, Da), low-dim key: (N, D), ...}; every key must be present (the
        derived features are computed from them)."""
        self.normalizer.fit_all(derived.fit_arrays(self.config.base, data))

    def check_obs(self, obs: Mapping[str, torch.Tensor]) -> int:
        """Fail early with the key and the expected shape; returns B."""
        return check_obs(self.config, obs)

    def predict_normalized(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """obs (B, To, ...) env units -> chunk (B, T, Da) in normalized action units."""
        b = self.check_obs(obs)
        c = self.config.base
        cond = self.obs_encoder(derived.encoder_inputs(self.normalizer, c, obs), deterministic=True).cond
        return self.head(cond).reshape(b, c.horizon, c.action_dim)

    def compute_loss(self, batch: Mapping[str, object]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        target = self.normalizer.normalize(ACTION_KEY, batch["action"].to(torch.float32))
        loss = chunk_mse(self.predict_normalized(batch["obs"]), target)
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def predict_action(self, obs: Mapping[str, torch.Tensor], sampler: str | None = None, steps: int | None = None,
                       generator: torch.Generator | None = None, eta: float | None = None) -> ActionPrediction:
        """obs (B, To, ...) env units -> ActionPrediction(action (B, Ta, Da), chunk (B, T, Da)) env units.
        sampler / steps / generator / eta are accepted and ignored (deterministic regression), so rollout code
        written for DiffusionPolicy runs unchanged."""
        chunk = self.normalizer.unnormalize(ACTION_KEY, self.predict_normalized(obs))
        return ActionPrediction(chunk[:, self.executed_slice], chunk)
