"""The one check of an observation batch against a policy config (diffusion, consistency student, MLP BC)."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def check_obs(config, obs: Mapping[str, torch.Tensor]) -> int:
    """obs {key: (B, To, ...)} against config.obs_shapes / n_obs_steps; fails early naming the key and the expected
    shape; returns B."""
    b = None
    for key, shape in config.obs_shapes.items():
        if key not in obs:
            raise KeyError(f"obs is missing key {key!r}; expected keys {list(config.obs_shapes)}")
        want = (config.n_obs_steps, *shape)
        got = tuple(obs[key].shape)
        if got[1:] != want or (b is not None and got[0] != b):
            raise ValueError(f"obs[{key!r}] has shape {got}, expected (B, {', '.join(map(str, want))})"
                             + (f" with B={b}" if b is not None else ""))
        b = got[0]
    return int(b)
