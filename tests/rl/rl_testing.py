"""Helpers shared by the RL tests (a plain module, not a conftest: basenames must be unique across tests/).
Importing it pins torch to one thread (2 shared CI cores)."""

import numpy as np
import torch

torch.set_num_threads(1)


def bandit_policy(sigma_max=0.8, seed=0, width=32):
    """A tiny single-action diffusion policy (T = Ta = Da = 1, To = 1) with identity normalization, on the
    RL-100 DDIM grid (timesteps 91..1, eta 1, sigma clipped to [0.01, sigma_max]). Eval mode (no dropout)."""
    from policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
    from policies.diffusion.config import DenoiserConfig, EncoderConfig
    from policies.rl.denoise_ppo import rl100_scheduler

    torch.manual_seed(seed)
    cfg = DiffusionPolicyConfig(obs_shapes={"state": (1,)}, action_dim=1, n_obs_steps=1, horizon=1,
                                n_action_steps=1, action_start=0,
                                denoiser=DenoiserConfig(mlp_width=width, mlp_depth=1, mlp_time_dim=16),
                                encoder=EncoderConfig(state_encoder="identity"),
                                scheduler=rl100_scheduler(sigma_max=sigma_max),
                                obs_norm="identity", action_norm="identity")
    policy = DiffusionPolicy(cfg)
    policy.fit_normalizer({"state": np.zeros((4, 1)), "action": np.zeros((4, 1))})
    return policy.eval()


def chunk_policy(sigma_max=0.1, seed=0):
    """The library's tiny chunk config (To=2, T=8, Ta=4 starting at 1, Da=4) on the RL-100 grid."""
    from policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
    from policies.rl.denoise_ppo import rl100_scheduler

    torch.manual_seed(seed)
    cfg = DiffusionPolicyConfig.example().replace(scheduler=rl100_scheduler(sigma_max=sigma_max))
    policy = DiffusionPolicy(cfg)
    rng = np.random.default_rng(seed)
    policy.fit_normalizer({k: rng.uniform(-2, 2, size=(256, *policy.normalizer.stats[k].shape))
                           for k in policy.normalizer.keys()})
    return policy.eval()


def random_obs(config, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand((batch, config.n_obs_steps, *s), generator=g) * 4 - 2 for k, s in config.obs_shapes.items()}
