"""Warm-started one-step consistency sampling (sampler "cm_warm"): RTI's warm start (rti_consistency.md §1) on a
distilled student, one network call per decision.

Glossary: B batch, To obs history, T horizon, Da action dim, n actions executed per decision (default 1, as RTI),
t the chain point (a DDIM timestep of the rl100 student's training chain).

1. First call (or after `reset()`): the CM-1 chunk from noise (`ConsistencyPolicy.sample_normalized`).
2. The normalized chunk is kept as the guess; binary gripper dims become +-1/factor (RTI's clip mode, factor 10,
   so that the re-noised guess does not pin the gripper to its last mode: policies/diffusion/rti.py says why).
3. Every later call: shift the guess by n (repeat the last row), re-noise it to t with the student's own multistep
   rule (x_t = sqrt(abar_t) g + sqrt(1 - abar_t) z, the step a CM-2 chain takes from its first output) and jump to
   x0 in one call.

Why: the one-step student draws each chunk from fresh noise and keeps nothing between decisions; on states off its
training distribution (the PyBullet arm server) it lost 19-22 points of success that its RTI-exported teacher kept
(docs/benchmarks.md "Deployment transfer"), and neither more consistency steps (CM-3) nor replanning every step
(--n-exec 1) recovered them. RTI differs in one more way: each decision starts from the previous plan.
Choices (recorded in the README): the guess is re-noised (RTI feeds its clean guess at K'; the student was trained
only on points of the teacher's noised chain, so a clean input at t is off its training distribution); t defaults
to the student's chain point nearest RTI's export level 20; rl100 students only (a ctm student's chain is in EDM
sigmas, not wired here: refused by name).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from policies.consistency.model import ConsistencyPolicy
from policies.diffusion.model import ACTION_KEY, ActionPrediction
from policies.diffusion.rti import AUTO_CLIP_FACTOR, DEFAULT_EXPORT_STEPS, clip_gripper, shift_guess, threshold_gripper


@dataclass(frozen=True)
class WarmConfig:
    t: int | None = None  # chain point the shifted guess is re-noised to; None = nearest DEFAULT_EXPORT_STEPS[0]
    n_exec: int = 1  # actions executed per decision (the guess shifts by this much)
    gripper_dims: tuple[int, ...] = ()  # binary dims clipped to +-1/factor in the guess and thresholded on output
    factor: float = AUTO_CLIP_FACTOR  # RTI's clip factor for a policy trained with the gripper at +-1


def trained_points(student: ConsistencyPolicy) -> list[int]:
    """The DDIM timesteps the rl100 student was distilled on (every point of the teacher's chain)."""
    ts, _ = student.schedule.timesteps("ddim", student.config.base.scheduler.num_inference_steps)
    return [int(t) for t in ts]


def resolve_config(student: ConsistencyPolicy, config: WarmConfig) -> WarmConfig:
    """Check the config against the student; fill t. Raises ValueError naming the bad field."""
    if student.method != "rl100":
        raise ValueError(f"cm_warm: needs an rl100 student (consistency.method rl100), got {student.method!r}")
    c = student.config.base
    pts = trained_points(student)
    t = config.t if config.t is not None else min(pts, key=lambda p: abs(p - DEFAULT_EXPORT_STEPS[0]))
    if t not in pts:
        raise ValueError(f"cm_warm: t={t} is not a point the student was trained on; expected one of {pts}")
    if not 1 <= config.n_exec <= c.n_action_steps:
        raise ValueError(f"cm_warm: n_exec={config.n_exec}, expected 1..{c.n_action_steps} (the policy's Ta)")
    if any(not -c.action_dim <= d < c.action_dim for d in config.gripper_dims):
        raise ValueError(f"cm_warm: gripper_dims {config.gripper_dims} out of range for Da={c.action_dim}")
    return replace(config, t=t, gripper_dims=tuple(config.gripper_dims))


class WarmConsistencySampler:
    """Stateful: `__call__(obs, noise) -> ActionPrediction(action (B, n, Da), chunk (B, T, Da))`; `reset()` drops
    the guess. `noise` (B, T, Da) is the first call's start noise or a warm call's re-noising draw."""

    def __init__(self, student: ConsistencyPolicy, config: WarmConfig | None = None):
        self.policy = student
        self.config = resolve_config(student, config or WarmConfig())
        self.guess: torch.Tensor | None = None  # (B, T, Da) normalized

    def reset(self) -> None:
        self.guess = None

    def first(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """cond (B, Dc), noise (B, T, Da) -> normalized chunk: the plain CM-1 sample."""
        return self.policy.sample_normalized(cond, [noise])

    def warm(self, guess: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The stored guess (B, T, Da), shifted by n and re-noised to t with `noise`, -> x0 in one call."""
        p, t = self.policy, self.config.t
        tt = torch.full((cond.shape[0],), t, dtype=torch.long, device=cond.device)
        x_t = p.schedule.add_noise(shift_guess(guess, self.config.n_exec), noise, tt)
        return p.rl100_jump(x_t, tt, cond).clamp(-1.0, 1.0)

    def store(self, x: torch.Tensor) -> torch.Tensor:
        self.guess = clip_gripper(x, self.config.gripper_dims, self.config.factor)
        return self.guess

    def output(self, x: torch.Tensor) -> ActionPrediction:
        p = self.policy
        chunk = p.normalizer.unnormalize(ACTION_KEY, x)
        s = p.config.base.action_start
        return ActionPrediction(threshold_gripper(chunk[:, s:s + self.config.n_exec], self.config.gripper_dims),
                                chunk)

    @torch.no_grad()
    def __call__(self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> ActionPrediction:
        c = self.policy.config.base
        cond = self.policy.encode_obs(obs)
        if noise is None:
            noise = torch.randn((cond.shape[0], c.horizon, c.action_dim), generator=generator, dtype=cond.dtype)
        if self.guess is None or self.guess.shape[0] != cond.shape[0]:
            x = self.first(cond, noise)
        else:
            x = self.warm(self.guess, cond, noise)
        self.store(x)
        return self.output(x)
