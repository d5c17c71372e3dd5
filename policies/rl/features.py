"""Frozen-encoder features in bounded blocks (RGB observations through the RL stages).

Glossary: B rows, To obs history, Dc encoder-feature width.

The RL stages encode many observation windows at once: every chunk start of the stores (offline-rl) and every
decision's next observation of a collection (online-rl). For state observations one pass is cheap; for images
the RGB encoder's activations are ~40x the uint8 input (96x96 front camera, To = 2: ~2 MB per row at the
first conv), so one pass over 2048 rows needed ~4 GB. Rows per pass are therefore bounded by the number of
image pixels they hold.

    block_rows(policy_config)          -> rows per encoder pass (MAX_ROWS for state-only policies)
    encode_blocks(policy, obs, rows)   -> (B, Dc) deterministic features (VIB mean, eval crop), no grad
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

MAX_ROWS = 2048
PIXEL_BUDGET = 1 << 21  # image pixels per encoder pass (~100 rows of a 96x96 camera with To = 2, ~200 MB)


def block_rows(config, pixel_budget: int | None = None, max_rows: int = MAX_ROWS) -> int:
    """Rows per encoder pass for a DiffusionPolicyConfig: max_rows unless its image windows exceed the budget
    (default PIXEL_BUDGET, read at call time)."""
    pixel_budget = PIXEL_BUDGET if pixel_budget is None else pixel_budget
    pixels = sum(config.n_obs_steps * math.prod(config.obs_shapes[k][:2]) for k in config.image_keys)
    return max_rows if pixels == 0 else int(max(1, min(max_rows, pixel_budget // pixels)))


@torch.no_grad()
def encode_blocks(policy, obs: Mapping[str, np.ndarray | torch.Tensor], rows: int | None = None) -> torch.Tensor:
    """obs (B, To, ...) env units -> (B, Dc) `encode_obs(obs, deterministic=True).cond`, `rows` at a time."""
    rows = block_rows(policy.config) if rows is None else rows
    n = len(next(iter(obs.values())))
    out = []
    for s in range(0, n, rows):
        part = {k: torch.as_tensor(np.ascontiguousarray(v[s:s + rows]) if isinstance(v, np.ndarray) else v[s:s + rows])
                for k, v in obs.items()}
        out.append(policy.encode_obs(part, deterministic=True).cond)
    return torch.cat(out)
