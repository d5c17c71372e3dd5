"""DiffusionPolicy: epsilon-prediction diffusion over an action chunk, conditioned on an obs history.

Glossary: B batch, To obs history, T horizon (predicted chunk), Ta executed actions, Da action dim,
K denoising steps, Dc global-cond width.

Interface (shapes; obs/actions are in env units, normalization happens inside):
    compute_loss(batch) -> (loss, metrics)          batch = {"obs": {key: (B, To, ...)}, "action": (B, T, Da)}
    predict_action(obs, sampler, steps, generator) -> ActionPrediction(action (B, Ta, Da), chunk (B, T, Da))
RL interface (rl100.md §2; all tensors in normalized action space):
    denoise_step_distribution(x_t, t, t_prev, cond) -> StepGaussian(mean, sigma, x0_pred, eps_pred)
    step_log_prob(x_prev, mean, sigma, reduce)      -> (B,) sum over executed (or all) elements
    sample_with_trajectory(obs | cond=, steps)      -> DenoisingTrajectory (chain x_K..x_0 + per-step log-probs)
    chain_log_prob(cond, chain, timesteps, prev)    -> (B, K) log-probs of a stored chain under current weights
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from policies.common.layers import as_step_tensor
from policies.common.normalizer import Normalizer, policy_normalizer
from policies.common.obs_check import check_obs
from policies.diffusion import loss as loss_fns
from policies.diffusion.config import DiffusionPolicyConfig
from policies.diffusion.denoisers import build_denoiser
from policies.diffusion.noise import NoiseSchedule, StepGaussian, clip_sigma, gaussian_log_prob
from policies.encoders import derived
from policies.encoders.obs_encoder import EncoderOutput, ObsEncoder

ACTION_KEY = "action"


class ActionPrediction(NamedTuple):
    action: torch.Tensor  # (B, Ta, Da) executed part, env units
    chunk: torch.Tensor  # (B, T, Da) full predicted chunk, env units


class DenoisingTrajectory(NamedTuple):
    chain: torch.Tensor  # (B, K+1, T, Da) normalized x_K (noise) ... x_0 (sample)
    log_probs: torch.Tensor  # (B, K) log pi(x_{k+1} | x_k), summed over the executed slice
    timesteps: torch.Tensor  # (K,) t of each step
    prev_timesteps: torch.Tensor  # (K,) t_prev of each step
    cond: torch.Tensor  # (B, Dc) encoder output the chain was sampled with (detached)
    action: torch.Tensor  # (B, Ta, Da) env units
    chunk: torch.Tensor  # (B, T, Da) env units


def scale_action_dims(normalizer: Normalizer, dims: Sequence[int], factor: float) -> None:
    """Make the action normalizer map each dim in dims to env_value / factor (RTI's scale mode, robomimic's
    identity normalizer then / factor); the other dims keep their fitted stats."""
    st = normalizer.stats[ACTION_KEY]
    scale, offset = st.scale.detach().double().numpy().copy(), st.offset.detach().double().numpy().copy()
    for d in dims:
        scale[d], offset[d] = 1.0 / factor, 0.0
    normalizer.set_stats(ACTION_KEY, scale=scale, offset=offset)


class DiffusionPolicy(nn.Module):
    def __init__(self, config: DiffusionPolicyConfig):
        super().__init__()
        self.config = config
        c = config
        self.normalizer = policy_normalizer(c)
        self.obs_encoder = ObsEncoder.for_policy(c)
        self.denoiser = build_denoiser(c.denoiser, c.horizon, c.action_dim, self.obs_encoder.out_dim)
        self._schedule: NoiseSchedule | None = None  # built on first use (diffusers import is slow)

    # ------------------------------------------------------------------ helpers
    @property
    def schedule(self) -> NoiseSchedule:
        if self._schedule is None:
            self._schedule = NoiseSchedule(self.config.scheduler)
        return self._schedule

    @property
    def executed_slice(self) -> slice:
        s = self.config.action_start
        return slice(s, s + self.config.n_action_steps)

    def fit_normalizer(self, data: Mapping[str, np.ndarray]) -> None:
        """Fit stats from arrays {"action": (N, Da), low-dim key: (N, D), ...}; every key must be present (the
        derived features are computed from them)."""
        self.normalizer.fit_all(derived.fit_arrays(self.config, data))
        if self.config.gripper_factor != 1.0:
            scale_action_dims(self.normalizer, [self.config.action_dim - 1], self.config.gripper_factor)

    def check_obs(self, obs: Mapping[str, torch.Tensor]) -> int:
        """Fail early with the key and the expected shape; returns B."""
        return check_obs(self.config, obs)

    def encode_obs(self, obs: Mapping[str, torch.Tensor], deterministic: bool | None = None) -> EncoderOutput:
        """obs in env units (B, To, ...) -> EncoderOutput (cond (B, Dc), kl, recon, normalized state)."""
        self.check_obs(obs)
        return self.obs_encoder(derived.encoder_inputs(self.normalizer, self.config, obs), deterministic=deterministic)

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: Mapping[str, object], generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, dict[str, float]]:
        return loss_fns.compute_loss(self, batch, generator=generator)

    # ------------------------------------------------------------------ one step as a Gaussian
    def denoise_step_distribution(self, x_t: torch.Tensor, t: int | torch.Tensor, t_prev: int | torch.Tensor,
                                  cond: torch.Tensor, *, kind: str = "ddim", eta: float | None = None,
                                  clip: bool = True) -> StepGaussian:
        """x_t (B, T, Da) normalized, cond (B, Dc) or (1, Dc) shared by the rows -> Gaussian over x_{t_prev}.

        kind="ddim": eta defaults to scheduler.rl_eta; kind="ddpm": the DDPM posterior (eta unused).
        clip=True clips sigma to [sigma_min, sigma_max] (needed for a finite log-prob); the mean always uses
        the unclipped sigma, as RL-100 does.
        """
        b = cond.shape[0]  # 1 when all rows share one observation (best-of-N): the step broadcasts with it
        t_b, tp_b = as_step_tensor(t, b, x_t.device), as_step_tensor(t_prev, b, x_t.device)
        eps = self.denoiser(x_t, t_b, cond)
        if kind == "ddim":
            eta = self.config.scheduler.rl_eta if eta is None else eta
            mean, sigma, x0 = self.schedule.ddim_step(x_t, eps, t_b, tp_b, eta)
        elif kind == "ddpm":
            mean, sigma, x0 = self.schedule.ddpm_step(x_t, eps, t_b, tp_b)
        else:
            raise ValueError(f"kind must be 'ddim' or 'ddpm', got {kind!r}")
        if clip:
            sigma = clip_sigma(sigma, self.config.scheduler.sigma_min, self.config.scheduler.sigma_max)
        return StepGaussian(mean, sigma, x0, eps)

    def step_log_prob(self, x_prev: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor,
                      reduce: str = "executed") -> torch.Tensor:
        """log N(x_prev; mean, sigma^2): reduce "executed" -> (B,) over chunk[action_start:+Ta] x Da (RL-100),
        "chunk" -> (B,) over the whole chunk, "none" -> (B, T, Da)."""
        lp = gaussian_log_prob(x_prev, mean, sigma)
        if reduce == "none":
            return lp
        if reduce == "executed":
            lp = lp[:, self.executed_slice]
        elif reduce != "chunk":
            raise ValueError(f"reduce must be 'executed', 'chunk' or 'none', got {reduce!r}")
        return lp.flatten(1).sum(-1)

    # ------------------------------------------------------------------ sampling
    def _sample(self, cond: torch.Tensor, sampler: str, steps: int, generator: torch.Generator | None,
                eta: float, clip: bool, keep_chain: bool):
        """-> (x_0, chain [x_K..x_0] or [x_K], per-step log-probs, timesteps, prev_timesteps)."""
        c = self.config
        ts, prev = self.schedule.timesteps(sampler, steps)
        b = cond.shape[0]
        x = torch.randn((b, c.horizon, c.action_dim), generator=generator, dtype=cond.dtype).to(cond.device)
        chain, logps = [x], []
        for t, tp in zip(ts, prev):
            g = self.denoise_step_distribution(x, t, tp, cond, kind=sampler, eta=eta, clip=clip)
            if bool((g.sigma > 0).any()):
                z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
                x = g.mean + g.sigma * z
            else:
                x = g.mean
            if keep_chain:
                chain.append(x)
                logps.append(self.step_log_prob(x, g.mean, g.sigma))
        return x, chain, logps, ts, prev

    def _unnormalize(self, x: torch.Tensor) -> ActionPrediction:
        chunk = self.normalizer.unnormalize(ACTION_KEY, x)
        return ActionPrediction(chunk[:, self.executed_slice], chunk)

    @torch.no_grad()
    def predict_action(self, obs: Mapping[str, torch.Tensor], sampler: str | None = None, steps: int | None = None,
                       generator: torch.Generator | None = None, eta: float | None = None) -> ActionPrediction:
        """obs (B, To, ...) env units -> ActionPrediction(action (B, Ta, Da), chunk (B, T, Da)) env units.

        sampler "ddim" (default K = scheduler.num_inference_steps, eta = scheduler.ddim_eta, no sigma clip:
        identical to diffusers' DDIMScheduler) or "ddpm" (default K = num_train_timesteps). The encoder is
        deterministic here (VIB mean).
        """
        sc = self.config.scheduler
        sampler = sampler or sc.default_sampler
        if steps is None:
            steps = sc.num_inference_steps if sampler == "ddim" else sc.num_train_timesteps
        cond = self.encode_obs(obs, deterministic=True).cond
        x, *_ = self._sample(cond, sampler, steps, generator, sc.ddim_eta if eta is None else eta, clip=False,
                             keep_chain=False)
        return self._unnormalize(x)

    @torch.no_grad()
    def sample_with_trajectory(self, obs: Mapping[str, torch.Tensor] | None, steps: int | None = None,
                               generator: torch.Generator | None = None, eta: float | None = None,
                               sampler: str = "ddim", cond: torch.Tensor | None = None) -> DenoisingTrajectory:
        """Stochastic sampling (eta = scheduler.rl_eta, clipped sigma) keeping every x_k and its log-prob.

        The encoder runs deterministically so a later `chain_log_prob` with unchanged weights gives ratio 1.
        cond (B, Dc) instead of obs: features the deterministic encoder already produced (e.g. a frozen-encoder
        cache, so an image policy does not re-run its CNN); the chain and its noise draws are the same.
        """
        if (obs is None) == (cond is None):
            raise ValueError("sample_with_trajectory needs exactly one of obs and cond")
        sc = self.config.scheduler
        steps = steps or sc.num_inference_steps
        if cond is None:
            cond = self.encode_obs(obs, deterministic=True).cond
        x, chain, logps, ts, prev = self._sample(cond, sampler, steps, generator, sc.rl_eta if eta is None else eta,
                                                 clip=True, keep_chain=True)
        action, chunk = self._unnormalize(x)
        return DenoisingTrajectory(torch.stack(chain, 1), torch.stack(logps, 1), torch.tensor(ts),
                                   torch.tensor(prev), cond, action, chunk)

    def chain_log_prob(self, cond: torch.Tensor, chain: torch.Tensor, timesteps: torch.Tensor,
                       prev_timesteps: torch.Tensor, eta: float | None = None, sampler: str = "ddim",
                       reduce: str = "executed") -> torch.Tensor:
        """Log-probs (B, K) of the stored transitions chain[:, k] -> chain[:, k+1] under the current weights
        (with grad): the PPO numerator. `cond` is usually the stored (frozen-encoder) trajectory.cond."""
        out = []
        for k in range(chain.shape[1] - 1):
            g = self.denoise_step_distribution(chain[:, k], timesteps[k], prev_timesteps[k], cond, kind=sampler,
                                               eta=eta, clip=True)
            out.append(self.step_log_prob(chain[:, k + 1], g.mean, g.sigma, reduce=reduce))
        return torch.stack(out, 1)
