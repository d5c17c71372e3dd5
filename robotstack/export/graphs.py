"""torch modules that become the exported ONNX graphs (batch 1, explicit noise in, env units out).

Glossary: To obs history, T horizon, Ta actions returned per call, Da action dim, n sampling steps,
S stochastic DDPM steps of an RTI warm call. Contract of names and shapes: robotstack/core/manifest.py.

Each graph = normalize obs -> encoder -> sampler (unrolled) -> unnormalize -> executed slice -> gripper
threshold, so normalization stats and the sampler's timesteps are constants of the graph.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from policies.consistency.model import ConsistencyPolicy
from policies.consistency.warm import WarmConsistencySampler
from policies.diffusion.model import ACTION_KEY, DiffusionPolicy
from policies.diffusion.rti import RTISampler, shift_guess, threshold_gripper
from policies.diffusion.samplers import sample_chunk


class ExpMish(nn.Module):
    """Mish(x) = x tanh(softplus(x)) with one exp: tanh(log(1 + e)) = e(e + 2) / (e(e + 2) + 2), e = exp(x).

    The same function (max |difference| ~1e-6 in float32). Why: onnxruntime (CPU) runs the Softplus of the
    exported nn.Mish as a scalar loop, ~5x slower than this form on a (32, 512) tensor, and it was a quarter of a
    best-of-32 policy call at the demo size. exp is clamped at x = 20, where the ratio is 1 in float32, so a
    large x cannot make inf / inf."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.exp(torch.clamp(x, max=20.0))
        n = e * (e + 2.0)
        return x * (n / (n + 2.0))


def for_export(module: nn.Module) -> nn.Module:
    """A copy of `module` to trace for ONNX, with every nn.Mish replaced by ExpMish (the original is left as is, so
    the export's sampler-path parity still compares the graph against the unmodified torch path)."""
    out = copy.deepcopy(module)
    for parent in out.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Mish):
                setattr(parent, name, ExpMish())
    return out


class _Graph(nn.Module):
    """Shared plumbing: positional ONNX inputs -> obs dict; chunk -> (action, chunk) in env units."""

    extra_inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ("action", "chunk")

    def __init__(self, policy: nn.Module, gripper_dims: Sequence[int], n_out: int):
        super().__init__()
        self.policy = policy
        self.obs_keys = list(policy.config.obs_shapes)
        self.gripper_dims = tuple(gripper_dims)
        self.start = policy.config.action_start
        self.n_out = n_out

    def split(self, args: tuple[torch.Tensor, ...]) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        k = len(self.obs_keys)
        return dict(zip(self.obs_keys, args[:k])), list(args[k:])

    def finish(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.policy.normalizer.unnormalize(ACTION_KEY, x)
        action = threshold_gripper(chunk[:, self.start:self.start + self.n_out], self.gripper_dims)
        return action, chunk

    @property
    def input_names(self) -> list[str]:
        return [*self.obs_keys, *self.extra_inputs]


class DDIMGraph(_Graph):
    """obs..., noise (1, 1, T, Da) -> action (1, Ta, Da), chunk: deterministic DDIM(K) (eta = 0)."""

    extra_inputs = ("noise",)

    def __init__(self, policy: DiffusionPolicy, steps: int, gripper_dims: Sequence[int], n_out: int | None = None):
        super().__init__(policy, gripper_dims, n_out or policy.config.n_action_steps)
        self.steps = steps

    def forward(self, *args: torch.Tensor):
        obs, (noise,) = self.split(args)
        cond = self.policy.encode_obs(obs, deterministic=True).cond
        return self.finish(sample_chunk(self.policy, cond, "ddim", self.steps, noise=noise[:, 0], eta=0.0))


class ConsistencyGraph(_Graph):
    """obs..., noise (1, n, T, Da) -> action (1, Ta, Da), chunk: n-step consistency sampling."""

    extra_inputs = ("noise",)

    def __init__(self, student: ConsistencyPolicy, steps: int, gripper_dims: Sequence[int], n_out: int | None = None):
        super().__init__(student, gripper_dims, n_out or student.config.n_action_steps)
        self.steps = steps

    def forward(self, *args: torch.Tensor):
        obs, (noise,) = self.split(args)
        cond = self.policy.encode_obs(obs)
        return self.finish(self.policy.sample_normalized(cond, [noise[:, i] for i in range(self.steps)]))


class _WarmStartGraph(_Graph):
    """A graph of a stateful sampler (rti, cm_warm): its `sampler` (policy, config.n_exec, store) and a third output,
    guess_out (1, T, Da): the normalized state the runtime feeds back as the next call's "guess"."""

    outputs = ("action", "chunk", "guess_out")

    def __init__(self, sampler: RTISampler | WarmConsistencySampler, gripper_dims: Sequence[int]):
        super().__init__(sampler.policy, gripper_dims, sampler.config.n_exec)
        self.sampler = sampler

    def finish_with_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (1, T, Da) normalized -> action, chunk, guess_out (the sampler's stored guess)."""
        self.sampler.store(x)
        return (*self.finish(x), self.sampler.guess)


class RTIInitGraph(_WarmStartGraph):
    """First RTI call: obs..., noise (1, 1, T, Da) -> action (1, n, Da), chunk, guess_out (1, T, Da)."""

    extra_inputs = ("noise",)

    def forward(self, *args: torch.Tensor):
        obs, (noise,) = self.split(args)
        cond = self.policy.encode_obs(obs, deterministic=True).cond
        r = self.sampler
        return self.finish_with_state(sample_chunk(self.policy, cond, r.config.init_sampler, r.init_steps,
                                                   noise=noise[:, 0], eta=0.0))


class RTIWarmGraph(_WarmStartGraph):
    """Warm RTI call: obs..., guess (1, T, Da)[, step_noise (1, S, T, Da)] -> action, chunk, guess_out."""

    def __init__(self, rti: RTISampler, gripper_dims: Sequence[int]):
        super().__init__(rti, gripper_dims)
        self.extra_inputs = ("guess", "step_noise") if rti.n_step_noise() else ("guess",)

    def forward(self, *args: torch.Tensor):
        obs, rest = self.split(args)
        guess, step_noise = rest[0], (rest[1] if len(rest) > 1 else None)
        cond = self.policy.encode_obs(obs, deterministic=True).cond
        r = self.sampler
        return self.finish_with_state(r.refine(shift_guess(guess, r.config.n_exec), cond, step_noise=step_noise))


class WarmConsistencyInitGraph(_WarmStartGraph):
    """First cm_warm call: obs..., noise (1, 1, T, Da) -> action (1, n, Da), chunk, guess_out (1, T, Da)."""

    extra_inputs = ("noise",)

    def forward(self, *args: torch.Tensor):
        obs, (noise,) = self.split(args)
        return self.finish_with_state(self.sampler.first(self.policy.encode_obs(obs), noise[:, 0]))


class WarmConsistencyGraph(_WarmStartGraph):
    """Warm cm_warm call: obs..., guess (1, T, Da), noise (1, 1, T, Da) -> action, chunk, guess_out (one NFE)."""

    extra_inputs = ("guess", "noise")

    def forward(self, *args: torch.Tensor):
        obs, (guess, noise) = self.split(args)
        return self.finish_with_state(self.sampler.warm(guess, self.policy.encode_obs(obs), noise[:, 0]))


class CriticGraph(nn.Module):
    """Best-of-N scorer: obs... (1, To, *shape), actions (1, N, h_a, Da) env units -> scores (1, N). The scorer
    (docs/CONTRACTS.md: forward(obs dict, actions) -> (B, N)) owns its normalisation, so the graph needs no stats."""

    outputs = ("scores",)

    def __init__(self, scorer: nn.Module, obs_keys: Sequence[str]):
        super().__init__()
        self.scorer = scorer
        self.obs_keys = list(obs_keys)

    @property
    def input_names(self) -> list[str]:
        return [*self.obs_keys, "actions"]

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.scorer(dict(zip(self.obs_keys, args[:-1])), args[-1])
