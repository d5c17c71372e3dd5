"""Samplers over one trained DiffusionPolicy with explicit noise: DDPM(K), DDIM(K) and listed-step chains.

Glossary: B batch, T horizon, Da action dim, K denoising steps, S number of stochastic steps (sigma > 0).

Every step goes through `policy.denoise_step_distribution(..., clip=False)`, the same call `predict_action`
uses, and noise is drawn from `generator` in the same order (initial x_K, then one draw per step whose
sigma > 0). So `sample_chunk(policy, cond, "ddpm", 100, generator=g)` reproduces `predict_action` bit for bit,
and passing `noise=` (B, T, Da) / `step_noise=` (B, S, T, Da) instead of a generator makes a sampler a pure
function of its inputs (what the ONNX export needs).

Step semantics of listed (possibly gapped) DDPM timesteps, e.g. RTI's `[5, 3, 1, 0]`:
- "jump": each listed t steps to the next listed value (the last to clean) - what diffusers 0.42.1's
  `DDPMScheduler.previous_timestep` does after `set_timesteps(timesteps=[...])` (checked in the tests);
- "official_t_minus_1": each listed t does the posterior step t -> t-1, whatever the list (diffusers 0.11.1,
  which the official RTI-DP code pins): a gap skips noise levels without a matching update.
Contiguous lists (`[2, 1, 0]`) give identical results in both modes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

STEP_SEMANTICS = ("official_t_minus_1", "jump")


def listed_prev(steps: Sequence[int], semantics: str) -> list[int]:
    """Previous timestep of each listed step (-1 = clean)."""
    if semantics == "jump":
        return [int(t) for t in steps[1:]] + [-1]
    if semantics == "official_t_minus_1":
        return [int(t) - 1 for t in steps]
    raise ValueError(f"step_semantics must be one of {STEP_SEMANTICS}, got {semantics!r}")


def check_steps(steps: Sequence[int], num_train_timesteps: int) -> list[int]:
    steps = [int(t) for t in steps]
    if any(not 0 <= t < num_train_timesteps for t in steps) or any(a <= b for a, b in zip(steps, steps[1:])):
        raise ValueError(f"steps {steps}: need strictly descending timesteps in [0, {num_train_timesteps})")
    if steps and steps[-1] != 0:
        raise ValueError(f"steps {steps}: the list must end in 0 so the chunk is fully denoised")
    return steps


def run_chain(policy: nn.Module, x: torch.Tensor, cond: torch.Tensor, timesteps: Sequence[int],
              prev_timesteps: Sequence[int], kind: str, eta: float = 0.0, generator: torch.Generator | None = None,
              step_noise: torch.Tensor | None = None, stochastic: bool = True) -> torch.Tensor:
    """x (B, T, Da) at timesteps[0] -> x at the clean end. step_noise (B, S, T, Da) replaces the generator
    draws (S = number of steps with sigma > 0); stochastic=False uses the posterior mean at every step."""
    i = 0
    for t, tp in zip(timesteps, prev_timesteps):
        g = policy.denoise_step_distribution(x, int(t), int(tp), cond, kind=kind, eta=eta, clip=False)
        if stochastic and bool((g.sigma > 0).any()):
            if step_noise is not None:
                z = step_noise[:, i]
            else:
                z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            i += 1
            x = g.mean + g.sigma * z
        else:
            x = g.mean
    return x


def n_stochastic_steps(policy: nn.Module, timesteps: Sequence[int], prev_timesteps: Sequence[int], kind: str,
                       eta: float = 0.0) -> int:
    """How many step-noise tensors `run_chain` consumes for this list (DDPM: every t > 0; DDIM: eta > 0)."""
    if kind == "ddpm":
        return sum(1 for t in timesteps if int(t) > 0)
    if kind == "ddim":
        return len(timesteps) if eta > 0 else 0
    raise ValueError(f"kind must be 'ddim' or 'ddpm', got {kind!r}")


def sample_chunk(policy: nn.Module, cond: torch.Tensor, sampler: str, steps: int,
                 generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                 step_noise: torch.Tensor | None = None, eta: float | None = None) -> torch.Tensor:
    """Normalized chunk (B, T, Da) with DDPM(steps) or DDIM(steps), as predict_action samples it."""
    c = policy.config
    eta = c.scheduler.ddim_eta if eta is None else eta
    ts, prev = policy.schedule.timesteps(sampler, steps)
    if noise is None:
        noise = torch.randn((cond.shape[0], c.horizon, c.action_dim), generator=generator,
                            dtype=cond.dtype).to(cond.device)
    return run_chain(policy, noise, cond, ts, prev, sampler, eta=eta, generator=generator, step_noise=step_noise)


class NFECounter:
    """Counts forward calls of a module (the denoiser): one call = one NFE at any batch size."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *_args) -> None:
        self.count += 1


@contextlib.contextmanager
def count_nfe(module: nn.Module) -> Iterator[NFECounter]:
    counter = NFECounter()
    handle = module.register_forward_hook(lambda *a: counter())
    try:
        yield counter
    finally:
        handle.remove()
