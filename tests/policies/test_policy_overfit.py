"""A tiny policy learns a fixed, unimodal obs -> action-chunk mapping on CPU in a few hundred steps."""

import numpy as np
import torch
from policy_testing import random_obs

from policies.diffusion import DenoiserConfig, DiffusionPolicy, DiffusionPolicyConfig, EncoderConfig


def _target(obs):
    """chunk[k] = tanh(W o_last) + 0.1 k: depends on the obs, differs per step, one mode."""
    o = torch.cat([obs["robot_eef_pos"][:, -1], obs["goal"][:, -1]], dim=-1)  # (B, 5)
    w = torch.tensor([[0.8, -0.5, 0.3, 0.0, 0.6], [-0.2, 0.4, 0.0, 0.9, -0.7]])
    base = torch.tanh(o @ w.T)  # (B, 2)
    return base[:, None, :] + 0.1 * torch.arange(4.0)[None, :, None]  # (B, T=4, Da=2)


def test_overfit_fixed_mapping():
    torch.manual_seed(0)
    cfg = DiffusionPolicyConfig(obs_shapes={"robot_eef_pos": (3,), "goal": (2,)}, action_dim=2,
                                n_obs_steps=2, horizon=4, n_action_steps=2,
                                denoiser=DenoiserConfig(mlp_width=128, mlp_depth=2, mlp_time_dim=32),
                                encoder=EncoderConfig(state_encoder="identity"))
    policy = DiffusionPolicy(cfg)
    train_obs = random_obs(cfg, 256, seed=1)
    actions = _target(train_obs)
    policy.fit_normalizer({"robot_eef_pos": train_obs["robot_eef_pos"].reshape(-1, 3).numpy(),
                           "goal": train_obs["goal"].reshape(-1, 2).numpy(),
                           "action": actions.reshape(-1, 2).numpy()})
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3, weight_decay=1e-6)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(600):
        idx = torch.randint(0, 256, (128,), generator=g)
        batch = {"obs": {k: v[idx] for k, v in train_obs.items()}, "action": actions[idx]}
        loss, _ = policy.compute_loss(batch, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:50]), np.mean(losses[-50:])
    assert last < 0.3 * first, (first, last)
    policy.eval()
    pred = policy.predict_action({k: v[:64] for k, v in train_obs.items()}, generator=torch.Generator())
    err = (pred.chunk - actions[:64]).abs().mean().item()
    assert err < 0.1, err
    print(f'overfit: loss {first:.3f} -> {last:.3f}, chunk MAE {err:.4f}')
