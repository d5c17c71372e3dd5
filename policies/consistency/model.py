"""ConsistencyPolicy: one-step / chained student distilled from a DiffusionPolicy (rti_consistency.md §2).

Glossary: B batch, To obs history, T horizon, Ta executed actions, Da action dim, Dc obs-cond width,
Ds s-embedding width, sigma EDM noise level, t DDPM timestep, n sampling steps (1 or 3).

Modules and state-dict names mirror DiffusionPolicy (`normalizer`, `obs_encoder`, `denoiser`), so the
student is warm-started by copying the teacher's tensors (`warm_start_from`). Everything is in normalized
action space until `_unnormalize`.

method "ctm", parameterization "edm" (CP's student):
               g = c_skip(t) x + c_out(t) F(c_in(t) x, round(c_noise(t)), [cond | emb(c_noise(s))])
               G(x, t, s) = (s/t) x + (1 - s/t) g            -> G(x, t, t) = x and G(x, sigma_min, s) = x
     Warm-started from an epsilon-teacher this is an unrelated function at step 0: F's weights were trained on
     time inputs 0..N-1 and epsilon outputs, here they get c_noise = 250 ln(sigma) (-980..1100) and are read
     as an x0-residual.
method "ctm", parameterization "teacher_eps" (issue 10 item 5): F is read as the teacher reads its epsilon-model,
     in the variance-exploding view x = x0 + sigma z, i.e. x_vp = x / sqrt(1 + sigma^2):
               t(sigma) = the teacher's training step whose sigma_t = sqrt((1 - abar_t) / abar_t) is nearest in log
               g(x, sigma, s) = x - sigma ramp(sigma) F(x / sqrt(1 + sigma^2), t(sigma), [cond | emb(c_noise(s))])
               ramp(sigma) = clamp((sigma - sigma_min) / (sigma_b - sigma_min), 0, 1), sigma_b = the smallest
                             teacher sigma_t above sigma_min (0.025 = t 0 of cosine-100 with sigma_min 0.02)
               G(x, t, s) = r x + (1 - r) g,  r = (s - sigma_min) / (t - sigma_min)  (r = 1 when s = t)
     so with the teacher's weights (new s-columns zero) G(x, sigma, sigma_min) = g = the teacher's unclipped x0
     prediction x0 = (x_vp - sqrt(1 - abar_t) eps) / sqrt(abar_t) at its own step, for every sigma >= sigma_b;
     and G(x, sigma_min, s) = G(x, t, t) = x for any weights (boundary condition). sigma_max must not exceed
     the teacher's largest sigma_t (2029 for cosine-100, 1.32 for linear-100): the one-step sample then starts
     at a noise level the teacher was trained on. Cost: x0 = x - sigma F amplifies an error in F by sigma, where
     EDM's c_out caps it at sigma_data (bench/results/cm_param.json measures both).
     sample:   x = G(z * sigma_max, sigma_max, sigma_min); chained: x <- G(x + sqrt(s_k^2 - smin^2) z_k, s_k, smin)
               at s_k = karras grid bins round(i N / n), i = 1..n-1 (CP uses bins 27, 54 of 80; its code
               feeds those numbers as raw sigmas - a quirk we do not copy).
method "rl100": x0 = F(x_t, t, cond) (prediction_type "sample"); one step at t = first DDIM timestep;
     chained:  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) z at DDIM grid points round(i K / n).
Outputs are clamped to [-1, 1] (the normalized action range) at every sampling step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from robotstack.core.errors import ConfigError

from policies.common.layers import SinusoidalPosEmb
from policies.common.normalizer import policy_normalizer
from policies.common.obs_check import check_obs
from policies.consistency import edm
from policies.consistency.config import ConsistencyPolicyConfig
from policies.diffusion.denoisers import build_denoiser
from policies.diffusion.model import ACTION_KEY, ActionPrediction
from policies.diffusion.noise import NoiseSchedule
from policies.encoders import derived
from policies.encoders.obs_encoder import ObsEncoder


class ConsistencyPolicy(nn.Module):
    def __init__(self, config: ConsistencyPolicyConfig):
        super().__init__()
        self.config = config
        b, cc = config.base, config.consistency
        self.normalizer = policy_normalizer(b)
        self.obs_encoder = ObsEncoder.for_policy(b)
        extra = cc.s_embed_dim if cc.method == "ctm" else 0
        self.denoiser = build_denoiser(b.denoiser, b.horizon, b.action_dim, self.obs_encoder.out_dim + extra)
        self.s_emb = SinusoidalPosEmb(cc.s_embed_dim) if cc.method == "ctm" else None
        self.register_buffer("sigmas", edm.karras_sigmas(cc.bins, cc.sigma_min, cc.sigma_max, cc.rho).float(),
                             persistent=False)
        self._schedule: NoiseSchedule | None = None
        if self.teacher_eps:
            log_sig, sigma_b = self._teacher_sigma_range()
            self.register_buffer("teacher_log_sigmas", log_sig, persistent=False)
            self.sigma_b = sigma_b

    # ------------------------------------------------------------------ helpers
    @property
    def method(self) -> str:
        return self.config.consistency.method

    @property
    def teacher_eps(self) -> bool:
        return self.method == "ctm" and self.config.consistency.parameterization == "teacher_eps"

    def _teacher_sigma_range(self) -> tuple[torch.Tensor, float]:
        """-> (log sigma_t (N,) of the teacher's training steps, sigma_b); checks sigma_min/max against them."""
        cc = self.config.consistency
        ac = self.schedule.alphas_cumprod.to(torch.float64)
        sig = ((1 - ac) / ac).sqrt()
        above = sig[sig > cc.sigma_min]
        if not len(above) or cc.sigma_max > float(sig.max()):
            raise ConfigError(
                f"config consistency.sigma_min/sigma_max: ({cc.sigma_min}, {cc.sigma_max}) with parameterization "
                f"teacher_eps must lie inside the teacher's noise levels sigma_t in [{float(sig.min()):.4g}, "
                f"{float(sig.max()):.4g}] ({self.config.base.scheduler.beta_schedule}, "
                f"{self.config.base.scheduler.num_train_timesteps} steps); lower sigma_max")
        return sig.log().float(), float(above.min())

    @property
    def schedule(self) -> NoiseSchedule:
        if self._schedule is None:
            self._schedule = NoiseSchedule(self.config.base.scheduler)
        return self._schedule

    def check_obs(self, obs: Mapping[str, torch.Tensor]) -> int:
        """Fail early with the key and the expected shape; returns B."""
        return check_obs(self.config.base, obs)

    def encode_obs(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """obs env units (B, To, ...) -> cond (B, Dc) (deterministic encoder)."""
        self.check_obs(obs)
        c = self.config.base
        return self.obs_encoder(derived.encoder_inputs(self.normalizer, c, obs), deterministic=True).cond

    # ------------------------------------------------------------------ the jumps
    def ctm_jump(self, x: torch.Tensor, sigma_t: torch.Tensor, sigma_s: torch.Tensor,
                 cond: torch.Tensor) -> torch.Tensor:
        """G(x_t, t, s): x (B, T, Da), sigma_t / sigma_s (B,) -> (B, T, Da)."""
        cc = self.config.consistency
        st, ss = sigma_t.reshape(-1, 1, 1), sigma_s.reshape(-1, 1, 1)
        ctx = torch.cat([cond, self.s_emb(edm.c_noise(sigma_s))], dim=-1)
        if self.teacher_eps:
            g = self.eps_denoise(x, sigma_t, ctx)
            r = torch.where(st > ss, (ss - cc.sigma_min) / (st - cc.sigma_min).clamp(min=1e-12),
                            torch.ones_like(st))
            return r * x + (1.0 - r) * g
        t_in = edm.c_noise(sigma_t).round()
        f = self.denoiser(edm.c_in(st, cc.sigma_data) * x, t_in, ctx)
        g = edm.c_skip(st, cc.sigma_min, cc.sigma_data) * x + edm.c_out(st, cc.sigma_min, cc.sigma_data) * f
        r = ss / st
        return r * x + (1.0 - r) * g

    def eps_denoise(self, x: torch.Tensor, sigma: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """teacher_eps g(x, sigma): x (B, T, Da) VE sample, sigma (B,), ctx (B, Dc + Ds) -> x0 estimate (B, T, Da)."""
        smin = self.config.consistency.sigma_min
        t = edm.nearest_timestep(sigma, self.teacher_log_sigmas)
        s = sigma.reshape(-1, 1, 1)
        eps = self.denoiser(x / (1.0 + s ** 2).sqrt(), t, ctx)
        ramp = ((s - smin) / (self.sigma_b - smin)).clamp(0.0, 1.0)
        return x - s * ramp * eps

    def rl100_jump(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x0 = F(x_t, t, cond): x (B, T, Da), t (B,) long -> (B, T, Da)."""
        return self.denoiser(x, t, cond)

    def chain_points(self, steps: int) -> list[float] | list[int]:
        """ctm: sigmas [sigma_max, s_1, ..]; rl100: DDIM timesteps [t_0, t_1, ..] (one per step)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if self.method == "ctm":
            n = self.config.consistency.bins
            return [float(self.sigmas[min(n - 1, round(i * n / steps))]) for i in range(steps)]
        ts, _ = self.schedule.timesteps("ddim", self.config.base.scheduler.num_inference_steps)
        return [ts[min(len(ts) - 1, round(i * len(ts) / steps))] for i in range(steps)]

    def sample_normalized(self, cond: torch.Tensor, noises: Sequence[torch.Tensor]) -> torch.Tensor:
        """cond (B, Dc), noises = n tensors (B, T, Da) -> normalized chunk (B, T, Da) in n steps."""
        cc = self.config.consistency
        b = cond.shape[0]
        pts = self.chain_points(len(noises))
        x = None
        for k, (p, z) in enumerate(zip(pts, noises)):
            if self.method == "ctm":
                sig = torch.full((b,), p, dtype=cond.dtype, device=cond.device)
                smin = torch.full((b,), cc.sigma_min, dtype=cond.dtype, device=cond.device)
                if k == 0:
                    x_t = z * (cc.sigma_max if cc.init == "sigma_max" else 1.0)
                else:
                    x_t = x + (p ** 2 - cc.sigma_min ** 2) ** 0.5 * z
                x = self.ctm_jump(x_t, sig, smin, cond)
            else:
                t = torch.full((b,), int(p), dtype=torch.long, device=cond.device)
                x_t = z if k == 0 else self.schedule.add_noise(x, z, t)
                x = self.rl100_jump(x_t, t, cond)
            x = x.clamp(-1.0, 1.0)
        return x

    def unnormalize(self, x: torch.Tensor) -> ActionPrediction:
        c = self.config.base
        chunk = self.normalizer.unnormalize(ACTION_KEY, x)
        action = chunk[:, c.action_start:c.action_start + c.n_action_steps]
        dims = self.config.consistency.gripper_dims
        if dims:
            action = action.clone()
            for d in dims:
                action[..., d] = torch.where(action[..., d] > 0, 1.0, -1.0)
        return ActionPrediction(action, chunk)

    @torch.no_grad()
    def predict_action(self, obs: Mapping[str, torch.Tensor], sampler: str | None = None, steps: int | None = None,
                       generator: torch.Generator | None = None, eta: float | None = None,
                       noises: Sequence[torch.Tensor] | None = None) -> ActionPrediction:
        """obs (B, To, ...) env units -> ActionPrediction(action (B, Ta, Da), chunk (B, T, Da)).

        `sampler` / `eta` are accepted (and ignored) so rollout code written for DiffusionPolicy runs unchanged;
        steps defaults to consistency.default_steps; noises (n x (B, T, Da)) replaces the generator draws."""
        c = self.config.base
        steps = steps or self.config.consistency.default_steps
        cond = self.encode_obs(obs)
        if noises is None:
            shape = (cond.shape[0], c.horizon, c.action_dim)
            noises = [torch.randn(shape, generator=generator, dtype=cond.dtype).to(cond.device) for _ in range(steps)]
        if len(noises) != steps:
            raise ValueError(f"predict_action: {len(noises)} noise tensors for {steps} steps")
        return self.unnormalize(self.sample_normalized(cond, noises))


def warm_start_from(student: ConsistencyPolicy, teacher: nn.Module) -> list[str]:
    """Copy the teacher's tensors into the student. Where the student's cond is wider (ctm's s-embedding), the
    overlapping columns are copied and the new ones zero-initialized (CP-P §III-D). Returns the widened names."""
    src, widened = teacher.state_dict(), []
    with torch.no_grad():
        for name, dst in student.state_dict().items():
            if name not in src:
                continue
            s = src[name]
            if s.shape == dst.shape:
                dst.copy_(s)
            elif s.ndim == dst.ndim == 2 and s.shape[0] == dst.shape[0] and s.shape[1] < dst.shape[1]:
                dst.zero_()
                dst[:, :s.shape[1]].copy_(s)
                widened.append(name)
            else:
                raise ValueError(f"warm_start_from: tensor {name!r} teacher {tuple(s.shape)} vs student "
                                 f"{tuple(dst.shape)} cannot be mapped")
    return widened
