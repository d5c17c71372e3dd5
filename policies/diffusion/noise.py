"""Noise schedule and one denoising step written as a Gaussian (the RL view of a diffusion sampler).

Glossary: B batch, T horizon, Da action dim, K denoising steps, N num_train_timesteps.
abar = alphas_cumprod. All step maths run in float32 in the same operation order as diffusers'
`DDIMScheduler.step` / `DDPMScheduler.step`, so results match them (tested), while exposing (mean, sigma)
that PPO over denoising steps needs (rl100.md §2):

  DDIM:  x0 = clip((x_t - sqrt(1-abar_t) eps) / sqrt(abar_t))
         sigma = eta * sqrt((1-abar_p)/(1-abar_t)) * sqrt(1 - abar_t/abar_p)
         mean  = sqrt(abar_p) x0 + sqrt(1 - abar_p - sigma^2) eps        (unclipped sigma, as RL-100)
  DDPM:  mean  = sqrt(abar_p) beta' / (1-abar_t) x0 + sqrt(alpha') (1-abar_p)/(1-abar_t) x_t
         sigma = sqrt((1-abar_p)/(1-abar_t) beta'),  alpha' = abar_t/abar_p, beta' = 1 - alpha'
  sigma_tilde = clip(sigma, sigma_min, sigma_max) when a clip is asked for; x_p = mean + sigma_tilde z.

The schedule itself (betas, timesteps) comes from diffusers' schedulers, imported lazily (~3.5 s import).

Timestep spacing (`scheduler.timestep_spacing`, diffusers' option, default "trailing" for every K, DDIM and DDPM):
trailing grids start at t = N-1 (where x_K really is pure noise) and end at N/K - 1 -> clean, e.g. DDIM-1 = [99],
DDIM-10 = [99, 89, ..., 9]. "leading" (diffusers' default) gives [N-N/K, ..., 0]: DDIM-1 = [0], one model call
that treats pure noise as a clean chunk, and DDIM-2 = [50, 0] starts from noise it labels abar_50 ~ 0.5. Trailing
for all K rather than below a threshold: both grids coincide at K = N (diffusion_policy's DDPM-100), the only
K diffusion_policy evaluates with, so no K gets worse and there is no switch in behaviour at some K. "leading"
stays selectable for RL-100's code grid (steps_offset=1 -> [91, ..., 1], rl100.md §2). Consecutive steps follow
diffusers' own rules (DDIM: t - N//K, so with K not dividing N a step may land 1 off the next listed t).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from policies.diffusion.config import SchedulerConfig

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class StepGaussian(NamedTuple):
    mean: torch.Tensor  # (B, T, Da)
    sigma: torch.Tensor  # (B, 1, 1) std used for sampling and log-prob (clipped when asked)
    x0_pred: torch.Tensor  # (B, T, Da) clipped prediction of the clean chunk
    eps_pred: torch.Tensor  # (B, T, Da) the denoiser output


class NoiseSchedule:
    """alphas_cumprod + the timestep grids of diffusers' DDPM/DDIM schedulers for one SchedulerConfig."""

    def __init__(self, cfg: SchedulerConfig):
        from diffusers import DDIMScheduler, DDPMScheduler  # lazy: heavy import

        self.cfg = cfg
        common = dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                      clip_sample=cfg.clip_sample, clip_sample_range=cfg.clip_sample_range,
                      prediction_type=cfg.prediction_type, steps_offset=cfg.steps_offset,
                      timestep_spacing=cfg.timestep_spacing)
        self.ddpm = DDPMScheduler(variance_type="fixed_small", **common)
        self.ddim = DDIMScheduler(set_alpha_to_one=cfg.set_alpha_to_one, **common)
        self.alphas_cumprod = self.ddim.alphas_cumprod.to(torch.float32)  # (N,)
        self.final_alpha_cumprod = torch.as_tensor(self.ddim.final_alpha_cumprod, dtype=torch.float32)
        self._grids: dict[tuple[str, int], tuple[list[int], list[int]]] = {}

    @property
    def num_train_timesteps(self) -> int:
        return self.cfg.num_train_timesteps

    def timesteps(self, sampler: str, steps: int) -> tuple[list[int], list[int]]:
        """(t_k, t_prev_k) for k = 0..K-1, high noise first; t_prev < 0 means "clean" (abar = final value)."""
        key = (sampler, steps)
        if key not in self._grids:
            if sampler == "ddim":
                self.ddim.set_timesteps(steps)
                ts = [int(t) for t in self.ddim.timesteps]
                ratio = self.cfg.num_train_timesteps // steps
                prev = [t - ratio for t in ts]  # diffusers' DDIM rule
                if self.cfg.prev_timestep_clamp:
                    prev = [max(p, 0) for p in prev]
            elif sampler == "ddpm":
                self.ddpm.set_timesteps(steps)
                ts = [int(t) for t in self.ddpm.timesteps]
                prev = ts[1:] + [-1]  # diffusers' DDPM rule: next listed step, then clean
            else:
                raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
            self._grids[key] = (ts, prev)
        return self._grids[key]

    def abar(self, t: torch.Tensor, final: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) long steps -> (B, 1, 1) alphas_cumprod; negative steps give `final` (default final_alpha)."""
        ac = self.alphas_cumprod.to(t.device)
        fin = (self.final_alpha_cumprod if final is None else final).to(t.device)
        return torch.where(t >= 0, ac[t.clamp(min=0)], fin).reshape(-1, 1, 1)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.abar(t)
        return a.sqrt() * x0 + (1.0 - a).sqrt() * eps

    def _x0(self, x_t: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
        x0 = (x_t - (1.0 - a_t) ** 0.5 * eps) / a_t ** 0.5
        if self.cfg.clip_sample:
            x0 = x0.clamp(-self.cfg.clip_sample_range, self.cfg.clip_sample_range)
        return x0

    def ddim_step(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor,
                  eta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> mean (B,T,Da), raw sigma (B,1,1), x0 (B,T,Da)."""
        a_t, a_p = self.abar(t), self.abar(t_prev)
        x0 = self._x0(x_t, eps, a_t)
        variance = ((1.0 - a_p) / (1.0 - a_t)) * (1.0 - a_t / a_p)
        sigma = eta * variance ** 0.5
        mean = a_p ** 0.5 * x0 + (1.0 - a_p - sigma ** 2) ** 0.5 * eps
        return mean, sigma, x0

    def ddpm_step(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
                  t_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> posterior mean (B,T,Da), std (B,1,1) (0 at t=0), x0 (B,T,Da)."""
        a_t = self.abar(t)
        a_p = self.abar(t_prev, final=torch.ones(()))  # DDPM's "one" for the last step, whatever set_alpha_to_one
        x0 = self._x0(x_t, eps, a_t)
        alpha, beta = a_t / a_p, 1.0 - a_t / a_p
        mean = (a_p ** 0.5 * beta) / (1.0 - a_t) * x0 + alpha ** 0.5 * (1.0 - a_p) / (1.0 - a_t) * x_t
        variance = ((1.0 - a_p) / (1.0 - a_t) * beta).clamp(min=1e-20)
        sigma = torch.where(t.reshape(-1, 1, 1) > 0, variance ** 0.5, torch.zeros_like(variance))
        return mean, sigma, x0


def clip_sigma(sigma: torch.Tensor, sigma_min: float, sigma_max: float | None) -> torch.Tensor:
    return sigma.clamp(min=sigma_min, max=sigma_max)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Element-wise Normal(mean, sigma) log-density (same formula as torch.distributions.Normal)."""
    return -((x - mean) ** 2) / (2.0 * sigma ** 2) - sigma.log() - LOG_SQRT_2PI
