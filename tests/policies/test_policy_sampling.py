"""Our Gaussian-step samplers vs diffusers' DDIMScheduler.step / DDPMScheduler.step."""

import numpy as np
import pytest
import torch
from policy_testing import random_obs, tiny_policy

from policies.diffusion import DiffusionPolicyConfig, SchedulerConfig


@pytest.fixture(scope="module")
def policy():
    return tiny_policy().eval()


def _cond(policy, b=4):
    return policy.encode_obs(random_obs(policy.config, b), deterministic=True).cond


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_loop_matches_diffusers(policy, eta):
    sched = policy.schedule
    cond = _cond(policy)
    g = torch.Generator().manual_seed(3)
    x_ours = x_ref = torch.randn(4, 8, 4, generator=g)
    ts, prev = sched.timesteps("ddim", 10)
    ref = sched.ddim
    ref.set_timesteps(10)
    assert [int(t) for t in ref.timesteps] == ts == list(range(99, 8, -10))  # trailing spacing
    with torch.no_grad():
        for t, tp in zip(ts, prev):
            z = torch.randn(x_ours.shape, generator=g)
            step = policy.denoise_step_distribution(x_ours, t, tp, cond, eta=eta, clip=False)
            x_ours = step.mean + step.sigma * z
            eps = policy.denoiser(x_ref, torch.full((4,), t), cond)
            x_ref = ref.step(eps, t, x_ref, eta=eta, variance_noise=z).prev_sample
            torch.testing.assert_close(x_ours, x_ref, rtol=1e-5, atol=1e-6)


def test_gaussian_mean_equals_deterministic_step(policy):
    """With eta = 0 the Gaussian's mean is diffusers' deterministic DDIM step and sigma is 0."""
    cond = _cond(policy)
    x = torch.randn(4, 8, 4, generator=torch.Generator().manual_seed(5))
    ref = policy.schedule.ddim
    ref.set_timesteps(10)
    with torch.no_grad():
        for t in (90, 40, 0):
            step = policy.denoise_step_distribution(x, t, t - 10, cond, eta=0.0, clip=False)
            assert torch.all(step.sigma == 0)
            det = ref.step(step.eps_pred, t, x, eta=0.0).prev_sample
            torch.testing.assert_close(step.mean, det, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(step.x0_pred, ref.step(step.eps_pred, t, x, eta=0.0).pred_original_sample)


def test_predict_action_ddim_is_deterministic_and_matches_loop(policy):
    obs = random_obs(policy.config, 3, seed=1)
    a1 = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    a2 = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a1.chunk, a2.chunk, rtol=0, atol=0)
    assert a1.action.shape == (3, 4, 4) and a1.chunk.shape == (3, 8, 4)
    torch.testing.assert_close(a1.action, a1.chunk[:, 1:5])
    # same result through diffusers' own scheduler loop
    g = torch.Generator().manual_seed(0)
    cond = policy.encode_obs(obs, deterministic=True).cond
    x = torch.randn(3, 8, 4, generator=g)
    ref = policy.schedule.ddim
    ref.set_timesteps(10)
    with torch.no_grad():
        for t in ref.timesteps:
            x = ref.step(policy.denoiser(x, t, cond), t, x, eta=0.0).prev_sample
    torch.testing.assert_close(policy.normalizer.unnormalize("action", x), a1.chunk, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [100, 10])
def test_ddpm_loop_matches_diffusers(policy, steps):
    cond = _cond(policy, 2)
    ref = policy.schedule.ddpm
    ref.set_timesteps(steps)
    g_ours, g_ref = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    x_ref = torch.randn(2, 8, 4, generator=g_ref)
    with torch.no_grad():
        for t in ref.timesteps:
            x_ref = ref.step(policy.denoiser(x_ref, t, cond), t, x_ref, generator=g_ref).prev_sample
        x_ours, *_ = policy._sample(cond, "ddpm", steps, g_ours, eta=0.0, clip=False, keep_chain=False)
    torch.testing.assert_close(x_ours, x_ref, rtol=1e-4, atol=1e-5)


def test_rl100_sigma_table():
    """rl100.md §2: steps_offset=1, prev clamp at 0, eta=1 -> timesteps 91..1 and this sigma table."""
    from policies.diffusion.noise import NoiseSchedule

    sched = NoiseSchedule(SchedulerConfig(steps_offset=1, prev_timestep_clamp=True, timestep_spacing="leading"))
    ts, prev = sched.timesteps("ddim", 10)
    assert ts == list(range(91, 0, -10)) and prev == [81, 71, 61, 51, 41, 31, 21, 11, 1, 0]
    x = torch.zeros(1, 1, 1)
    sig = [float(sched.ddim_step(x, x, torch.tensor([t]), torch.tensor([p]), 1.0)[1]) for t, p in zip(ts, prev)]
    want = [0.865, 0.713, 0.598, 0.505, 0.422, 0.343, 0.261, 0.166, 0.041]
    np.testing.assert_allclose(sig[:9], want, atol=1.5e-3)
    # sigma_max = 0.1 clips the first 8 steps; sigma_min = 0.01 never binds
    assert sum(s > 0.1 for s in sig) == 8 and min(sig) > 0.01


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 10, 100])
def test_few_step_grids_are_diffusers_trailing(steps):
    """Regression (issue 10 #4): with leading spacing DDIM-1 made its one model call at t=0 on pure noise and
    DDIM-2 started at t=50. Trailing grids start at t=N-1 and match a fresh diffusers DDIMScheduler / DDPMScheduler
    built with timestep_spacing="trailing" (step and prev rule included)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    from policies.diffusion.noise import NoiseSchedule

    sched = NoiseSchedule(SchedulerConfig())
    common = dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing")
    ddim, ddpm = DDIMScheduler(**common), DDPMScheduler(**common)
    ddim.set_timesteps(steps)
    ddpm.set_timesteps(steps)
    ts, prev = sched.timesteps("ddim", steps)
    assert ts == ddim.timesteps.tolist() and ts[0] == 99
    assert prev == [t - 100 // steps for t in ts] and prev[-1] < 0  # diffusers' DDIM rule; last step -> clean
    assert sched.timesteps("ddpm", steps)[0] == ddpm.timesteps.tolist()
    if steps == 1:
        assert ts == [99]
    leading = NoiseSchedule(SchedulerConfig(timestep_spacing="leading")).timesteps("ddim", steps)[0]
    assert leading[-1] == 0 and (steps == 100) == (leading == ts)  # only K = N coincides


def test_ddim1_predicts_from_noise_at_t99(policy):
    """One NFE, evaluated at the top noise level, and the result is the clipped x0 prediction."""
    from policies.diffusion.samplers import count_nfe

    cond = _cond(policy, 2)
    seen = []
    hook = policy.denoiser.register_forward_pre_hook(lambda m, a: seen.append(a[1].flatten().tolist()))
    try:
        with torch.no_grad(), count_nfe(policy.denoiser) as n:
            x, *_ = policy._sample(cond, "ddim", 1, torch.Generator().manual_seed(0), eta=0.0, clip=False,
                                   keep_chain=False)
    finally:
        hook.remove()
    assert n.count == 1 and seen == [[99, 99]]
    assert float(x.abs().max()) <= 1.0 + 1e-6


def test_sigma_defaults_and_validation():
    """rl100.md §2: sigma_max defaults to 0.8 for single actions, 0.1 for chunks; sigma_min = 0 is rejected
    (the last step's sigma is 0, so its log-prob would be NaN)."""
    from robotstack.core.errors import ConfigError

    cfg = DiffusionPolicyConfig.example()
    assert cfg.scheduler.sigma_max == 0.1 and cfg.n_action_steps == 4
    single = cfg.replace(horizon=1, n_action_steps=1, action_start=0, scheduler=SchedulerConfig())
    assert single.scheduler.sigma_max == 0.8
    kept = cfg.replace(scheduler=SchedulerConfig(sigma_max=0.3))
    assert kept.scheduler.sigma_max == 0.3
    assert DiffusionPolicyConfig.from_dict(cfg.to_dict()).scheduler.sigma_max == 0.1  # saved resolved
    for bad in (dict(sigma_min=0.0), dict(sigma_min=-0.1), dict(sigma_min=float("nan")),
                dict(sigma_min=0.2, sigma_max=0.1)):
        with pytest.raises(ConfigError, match="sigma_min"):
            SchedulerConfig(**bad)
    with pytest.raises(ConfigError, match="timestep_spacing"):
        SchedulerConfig(timestep_spacing="linspace")
    with pytest.raises(ConfigError, match="steps_offset"):
        SchedulerConfig(steps_offset=1)  # diffusers ignores the offset with trailing spacing: say so


def test_trajectory_shapes_and_final_sample(policy):
    cfg = policy.config
    tr = policy.sample_with_trajectory(random_obs(cfg, 3), steps=5, generator=torch.Generator().manual_seed(1))
    assert tr.chain.shape == (3, 6, cfg.horizon, cfg.action_dim)
    assert tr.log_probs.shape == (3, 5) and torch.isfinite(tr.log_probs).all()
    assert tr.timesteps.tolist() == [99, 79, 59, 39, 19]
    torch.testing.assert_close(policy.normalizer.unnormalize("action", tr.chain[:, -1]), tr.chunk)


def test_unet_policy_trains_and_samples():
    from policies.diffusion import DenoiserConfig, DiffusionPolicy
    from policy_testing import fit_random_stats

    cfg = DiffusionPolicyConfig.example().replace(
        denoiser=DenoiserConfig(kind="unet", unet_down_dims=(16, 32), unet_step_embed_dim=16))
    torch.manual_seed(0)
    p = DiffusionPolicy(cfg)
    fit_random_stats(p)
    obs = random_obs(cfg, 4)
    loss, metrics = p.compute_loss({"obs": obs, "action": torch.rand(4, 8, 4)})
    loss.backward()
    assert np.isfinite(metrics["loss"])
    out = p.eval().predict_action(obs, steps=3)
    assert out.action.shape == (4, 4, 4)
