"""Helpers shared by the policy tests (a plain module, not a conftest: conftest/test basenames must be unique
across tests/ folders without __init__.py). Importing it pins torch to one thread (2 shared CI cores)."""

import numpy as np
import torch

torch.set_num_threads(1)


def fit_random_stats(policy, seed: int = 0) -> None:
    """Fit the policy normalizer on random data of the right shapes (unit-ish ranges)."""
    rng = np.random.default_rng(seed)
    data = {k: rng.uniform(-2.0, 2.0, size=(256, *policy.normalizer.stats[k].shape))
            for k in policy.normalizer.keys()}
    policy.fit_normalizer(data)


def random_obs(config, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    obs = {}
    for key, shape in config.obs_shapes.items():
        full = (batch, config.n_obs_steps, *shape)
        if key.startswith("image_"):
            obs[key] = torch.randint(0, 256, full, generator=g, dtype=torch.uint8)
        else:
            obs[key] = torch.rand(full, generator=g) * 4 - 2
    return obs


def tiny_policy():
    from policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig

    torch.manual_seed(0)
    policy = DiffusionPolicy(DiffusionPolicyConfig.example())
    fit_random_stats(policy)
    return policy
