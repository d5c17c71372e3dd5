"""Log-probs of one denoising step: closed form, torch Normal, and ratio = 1 before any update."""

import math

import torch
from policy_testing import random_obs, tiny_policy

from policies.diffusion.noise import gaussian_log_prob


def test_log_prob_matches_torch_normal_and_closed_form():
    g = torch.Generator().manual_seed(0)
    mean, x = torch.randn(5, 8, 4, generator=g), torch.randn(5, 8, 4, generator=g)
    sigma = torch.rand(5, 1, 1, generator=g) + 0.05
    ref = torch.distributions.Normal(mean, sigma.expand_as(mean)).log_prob(x)
    torch.testing.assert_close(gaussian_log_prob(x, mean, sigma), ref)
    policy = tiny_policy()
    d = 8 * 4
    closed = (-((x - mean) ** 2).flatten(1).sum(-1) / (2 * sigma.flatten() ** 2)
              - d * sigma.flatten().log() - d / 2 * math.log(2 * math.pi))
    torch.testing.assert_close(policy.step_log_prob(x, mean, sigma, reduce="chunk"), closed)
    executed = ref[:, policy.executed_slice].flatten(1).sum(-1)  # chunk[1:5] for the example config
    torch.testing.assert_close(policy.step_log_prob(x, mean, sigma), executed)


@torch.no_grad()
def test_sigma_clip_and_noise_recovery():
    policy = tiny_policy().eval()
    sc = policy.config.scheduler
    assert sc.sigma_max == 0.1  # RL-100 chunk default (Ta = 4): clips all but the last of the 10 trailing steps
    tr = policy.sample_with_trajectory(random_obs(policy.config, 64), generator=torch.Generator().manual_seed(4))
    sigmas = []
    for k in range(tr.timesteps.numel()):
        step = policy.denoise_step_distribution(tr.chain[:, k], tr.timesteps[k], tr.prev_timesteps[k], tr.cond)
        sigmas.append(float(step.sigma[0]))
        z = (tr.chain[:, k + 1] - step.mean) / step.sigma  # recovers the injected standard-normal noise
        assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1.0) < 0.1
    assert all(sc.sigma_min - 1e-7 <= s <= 0.1 + 1e-7 for s in sigmas)
    assert sigmas[:9] == [sigmas[0]] * 9 and abs(sigmas[0] - 0.1) < 1e-6
    assert abs(sigmas[-1] - sc.sigma_min) < 1e-7  # last step (-> abar = 1) has sigma 0, floored


@torch.no_grad()
def test_last_step_log_prob_is_finite_with_the_default_floor():
    """The last DDIM step (-> abar = 1) has sigma 0; the sigma_min floor keeps its log-prob finite (a config with
    sigma_min = 0 is rejected, see test_policy_sampling)."""
    policy = tiny_policy().eval()
    tr = policy.sample_with_trajectory(random_obs(policy.config, 8), generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(tr.log_probs).all()
    policy.config.scheduler.sigma_min = 0.0  # what validation now refuses: NaN at the last step
    new = policy.chain_log_prob(tr.cond, tr.chain, tr.timesteps, tr.prev_timesteps)
    assert not torch.isfinite(new[:, -1]).any()


def test_ratio_is_one_before_update():
    policy = tiny_policy()
    policy.train()  # train mode on purpose: the trajectory API must still be deterministic in the encoder
    tr = policy.sample_with_trajectory(random_obs(policy.config, 6), generator=torch.Generator().manual_seed(2))
    new = policy.chain_log_prob(tr.cond, tr.chain, tr.timesteps, tr.prev_timesteps)
    ratio = (new - tr.log_probs).exp()
    torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-5)
    new.sum().backward()  # differentiable w.r.t. the denoiser
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.denoiser.parameters())
