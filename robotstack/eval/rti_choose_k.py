"""Estimate RTI's start step K' from recorded rollouts (rti_consistency.md §1.3, `robotstack rti choose-k`).

Glossary: B sampled frame pairs, To obs history, T horizon, Da action dim, k DDPM timestep.

For B random frames f (with f+1 in the same episode) of an episode store: A = full denoise at f, G = shift(A)
(the RTI guess for f+1), A' = full denoise at f+1 (same sampler, fresh noise). Per k:
    lhs_k = E ||G - sqrt(abar_k) A'||^2,   rhs_k = (1 - abar_k) T Da
and K' = the smallest k with lhs_k <= rhs_k: the shift error is inside the noise level the model expects at k.
All in normalized action space. The paper picks K' empirically; treat this as a starting point and validate
closed-loop (bench/bench_inference.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from robotstack.core.errors import ConfigError, StoreError
from robotstack.data.store import load_stores

from policies.checkpoint import load_checkpoint
from policies.diffusion.rti import choose_k_start, k_start_table, shift_guess
from policies.diffusion.samplers import sample_chunk


def _history(arr: np.ndarray, f: int, start: int, to: int) -> np.ndarray:
    idx = np.clip(np.arange(f - to + 1, f + 1), start, None)
    return arr[idx]


def choose_k(checkpoint: str | Path, store_path: str | Path, pairs: int = 128, sampler: str = "ddpm",
             steps: int | None = None, seed: int = 0) -> dict[str, Any]:
    policy = load_checkpoint(checkpoint, weights="auto")  # EMA weights when the checkpoint has them
    c = policy.config
    keys = list(c.obs_shapes)
    try:
        arrays, ends, _ = load_stores([store_path], keys)
    except StoreError as exc:
        raise ConfigError(f"rti choose-k --data: {exc}") from exc
    starts = np.concatenate([[0], ends[:-1]])
    rng = np.random.default_rng(seed)
    ep = rng.integers(0, len(ends), pairs)
    frames = np.array([rng.integers(starts[e], ends[e] - 1) for e in ep])  # f and f+1 in the episode
    def obs_at(offset: int) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.stack([_history(arrays[k], f + offset, starts[e], c.n_obs_steps)
                                              for f, e in zip(frames, ep)]).astype(np.float32)) for k in keys}
    steps = steps or (c.scheduler.num_train_timesteps if sampler == "ddpm" else c.scheduler.num_inference_steps)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        a0 = sample_chunk(policy, policy.encode_obs(obs_at(0), deterministic=True).cond, sampler, steps, generator=gen)
        a1 = sample_chunk(policy, policy.encode_obs(obs_at(1), deterministic=True).cond, sampler, steps, generator=gen)
    rows = k_start_table(shift_guess(a0, 1), a1, policy.schedule.alphas_cumprod)
    return {"k_start": choose_k_start(rows), "rows": rows, "pairs": pairs, "sampler": f"{sampler}:{steps}",
            "checkpoint": str(checkpoint), "data": str(store_path)}
