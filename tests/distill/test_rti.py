"""RTI semantics: rti_consistency.md §4.2 T1-T7 and T14 (RTI / DDPM / DDIM parts)."""

import numpy as np
import pytest
import torch
from fast_policy_testing import obs_batch, tiny_teacher

from policies.diffusion.rti import (RTIConfig, RTISampler, choose_k_start, clip_gripper, k_start_table,
                                    scale_gripper_normalizer, shift_guess, threshold_gripper)
from policies.diffusion.samplers import count_nfe, listed_prev, run_chain, sample_chunk


@pytest.fixture(scope="module")
def policy():
    return tiny_teacher()


def test_t1_zero_steps_is_pure_warm_start(policy):
    obs = obs_batch(policy.config)
    for mode in ("none", "clip"):
        r = RTISampler(policy, RTIConfig(steps=(), gripper_mode=mode, factor=10.0))
        r(obs, generator=torch.Generator().manual_seed(0))
        prev = r.guess.clone()
        out = r(obs)
        assert r.last_nfe == 0
        expect = shift_guess(prev)
        if mode == "clip":
            expect = clip_gripper(expect, [3], 10.0)
        torch.testing.assert_close(r.guess, expect, rtol=0, atol=0)
        chunk = policy.normalizer.unnormalize("action", shift_guess(prev))
        torch.testing.assert_close(out.chunk, chunk, rtol=0, atol=0)


def test_t2_shift_semantics_and_returned_row(policy):
    g = torch.arange(8, dtype=torch.float32).reshape(1, 8, 1).expand(1, 8, 4)
    s = shift_guess(g)
    assert s[0, :, 0].tolist() == [1, 2, 3, 4, 5, 6, 7, 7]
    assert shift_guess(g, 3)[0, :, 0].tolist() == [3, 4, 5, 6, 7, 7, 7, 7]
    r = RTISampler(policy, RTIConfig(steps=()))
    r.guess = g.clone()
    out = r(obs_batch(policy.config))
    start = policy.config.action_start  # To - 1
    torch.testing.assert_close(out.action, out.chunk[:, start:start + 1])
    torch.testing.assert_close(out.action, policy.normalizer.unnormalize("action", s)[:, start:start + 1])


def test_t3_first_call_is_dp_and_reset_clears(policy):
    obs = obs_batch(policy.config)
    dp = policy.predict_action(obs, sampler="ddpm", steps=100, generator=torch.Generator().manual_seed(3))
    r = RTISampler(policy, RTIConfig(k_start=2))
    out = r(obs, generator=torch.Generator().manual_seed(3))
    assert r.last_nfe == 100
    torch.testing.assert_close(out.chunk, dp.chunk, rtol=0, atol=0)
    r(obs)
    assert r.last_nfe == 3
    r.reset()
    assert r.guess is None
    r(obs)
    assert r.last_nfe == 100


def test_t4_full_list_from_noise_is_dp(policy):
    obs = obs_batch(policy.config, batch=2)
    dp = policy.predict_action(obs, sampler="ddpm", steps=100, generator=torch.Generator().manual_seed(5))
    r = RTISampler(policy, RTIConfig(steps=tuple(range(99, -1, -1))))
    gen = torch.Generator().manual_seed(5)
    x = torch.randn((2, 8, 4), generator=gen)  # "the guess replaced by fresh noise"
    cond = policy.encode_obs(obs, deterministic=True).cond
    with torch.no_grad():
        out = r.output(r.refine(x, cond, generator=gen))
    torch.testing.assert_close(out.chunk, dp.chunk, rtol=0, atol=0)


def test_t5_step_semantics(policy):
    obs = obs_batch(policy.config)
    cond = policy.encode_obs(obs, deterministic=True).cond
    x = torch.randn((1, 8, 4), generator=torch.Generator().manual_seed(1))

    def run(steps, sem):
        with torch.no_grad():
            return run_chain(policy, x, cond, steps, listed_prev(steps, sem), "ddpm", stochastic=False)

    torch.testing.assert_close(run([2, 1, 0], "jump"), run([2, 1, 0], "official_t_minus_1"), rtol=0, atol=0)
    assert not torch.allclose(run([5, 3, 1, 0], "jump"), run([5, 3, 1, 0], "official_t_minus_1"))
    # the installed diffusers (0.42.x) jumps to the next listed timestep with custom timesteps
    from diffusers import DDPMScheduler

    s = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    s.set_timesteps(timesteps=[5, 3, 1, 0])
    assert [int(s.previous_timestep(t)) for t in (5, 3, 1, 0)] == listed_prev([5, 3, 1, 0], "jump")


def test_t5_matches_diffusers_ddpm_step_on_a_gapped_list(policy):
    from diffusers import DDPMScheduler

    cond = policy.encode_obs(obs_batch(policy.config), deterministic=True).cond
    sc = policy.config.scheduler
    s = DDPMScheduler(num_train_timesteps=100, beta_schedule=sc.beta_schedule, clip_sample=sc.clip_sample,
                      variance_type="fixed_small")
    steps = [5, 3, 1, 0]
    s.set_timesteps(timesteps=steps)
    x0 = torch.randn((1, 8, 4), generator=torch.Generator().manual_seed(2))
    x = x0.clone()
    with torch.no_grad():
        for t in steps:
            eps = policy.denoiser(x, t, cond)
            x = s.step(eps, t, x, generator=torch.Generator().manual_seed(9)).prev_sample
        ours = x0.clone()
        for t, tp in zip(steps, listed_prev(steps, "jump")):
            g = policy.denoise_step_distribution(ours, t, tp, cond, kind="ddpm", clip=False)
            z = torch.randn(ours.shape, generator=torch.Generator().manual_seed(9))
            ours = g.mean + (g.sigma * z if t > 0 else 0)
    torch.testing.assert_close(ours, x, atol=2e-5, rtol=1e-5)


def _abar():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()


def _contraction(s: float, k_start: int, mu: float = 0.3) -> float:
    """||A~_0 - A_0|| / ||delta|| for deterministic posterior-mean steps with the optimal Gaussian eps."""
    ab = _abar()

    def run(x):
        for k in range(k_start, -1, -1):
            a, ap = ab[k], (ab[k - 1] if k > 0 else torch.tensor(1.0, dtype=torch.float64))
            eps = (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s ** 2 + 1 - a)
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            alpha, beta = a / ap, 1 - a / ap
            x = ap.sqrt() * beta / (1 - a) * x0 + alpha.sqrt() * (1 - ap) / (1 - a) * x
        return x

    x = torch.tensor([0.7], dtype=torch.float64)
    delta = 1e-3
    return float((run(x + delta) - run(x)).abs() / delta)


def test_t6_contraction_on_gaussian_data():
    for s in (0.05, 0.3):
        ratios = [_contraction(s, k) for k in (1, 3, 10, 30)]
        assert all(r < 1 for r in ratios), ratios
        assert all(b <= a + 1e-12 for a, b in zip(ratios, ratios[1:])), ratios
    # spec T6 table (its K' counts steps, i.e. steps [K'-1..0]): 0.80/0.43/0.08/0.01 at s=0.05, 0.99/0.97/0.77/0.28
    # at s=0.3, slightly > 1 at s=2 (1.00/1.00/1.01/1.06)
    for s, want in ((0.05, (0.80, 0.43, 0.08, 0.01)), (0.3, (0.99, 0.97, 0.77, 0.28)), (2.0, (1.0, 1.0, 1.01, 1.06))):
        got = [_contraction(s, n - 1) for n in (1, 3, 10, 30)]
        assert got == pytest.approx(want, abs=0.006), (s, got)
    # the paper's bound as written: c_k >= 1 for every k (documents the §1.3 caveat)
    ab = _abar()
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    betas = 1 - alphas
    c = ((1 - ab) * alphas).sqrt() + ab.sqrt() * betas * 1.0
    assert bool((c / ((1 - ab) * alphas).sqrt() >= 1).all())


def test_t7_discrete_dims(policy):
    x = torch.tensor([[[0.3, -0.2, 0.0, 0.7], [0.1, 0.1, 0.1, -0.4]]])
    c = clip_gripper(x, [3], 10.0)
    torch.testing.assert_close(c[..., 3], torch.tensor([[0.1, -0.1]]))
    assert torch.equal(c[..., :3], x[..., :3])
    assert clip_gripper(x, [3], 1.0)[..., 3].tolist() == [[1.0, -1.0]]
    assert threshold_gripper(x, [3])[..., 3].tolist() == [[1.0, -1.0]]
    bim = torch.zeros(1, 2, 20)
    bim[..., 9], bim[..., 19] = 0.4, -0.3
    out = threshold_gripper(clip_gripper(bim, [9, 19], 10.0), [9, 19])
    assert out[0, 0, 9] == 1 and out[0, 0, 19] == -1 and bool((out[..., :9] == 0).all())
    # scale mode: model space = env / factor for the gripper; round trip is exact
    p = tiny_teacher()
    scale_gripper_normalizer(p, [3], 10.0)
    a = torch.tensor([[[0.5, -1.0, 1.0, 1.0], [0.2, 0.3, -0.1, -1.0]]])
    n = p.normalizer.normalize("action", a)
    torch.testing.assert_close(n[..., 3], a[..., 3] / 10.0)
    torch.testing.assert_close(p.normalizer.unnormalize("action", n), a)
    # executed gripper is thresholded in the RTI output
    r = RTISampler(p, RTIConfig(k_start=1, gripper_mode="scale", factor=10.0))
    act = r(obs_batch(p.config), generator=torch.Generator().manual_seed(0)).action
    assert set(act[..., 3].flatten().tolist()) <= {-1.0, 1.0}


def test_t14_nfe_accounting(policy):
    obs = obs_batch(policy.config)
    for sampler, k in (("ddpm", 100), ("ddim", 10), ("ddim", 1)):
        with count_nfe(policy.denoiser) as n:
            policy.predict_action(obs, sampler=sampler, steps=k)
        assert n.count == k
    r = RTISampler(policy, RTIConfig(k_start=4, init_sampler="ddim", init_steps=10))
    r(obs)
    assert r.last_nfe == 10
    r(obs)
    assert r.last_nfe == 5
    r = RTISampler(policy, RTIConfig(steps=(7, 5, 3, 1, 0)))
    r.guess = torch.zeros(1, 8, 4)
    r(obs)
    assert r.last_nfe == 5


def test_choose_k_rule():
    ab = _abar()
    a = torch.zeros(16, 8, 4)
    rows = k_start_table(a + 0.05, a, ab)
    k = choose_k_start(rows)
    assert rows[k]["lhs"] <= rows[k]["rhs"] and (k == 0 or rows[k - 1]["lhs"] > rows[k - 1]["rhs"])
    assert choose_k_start(k_start_table(a + 1.0, a, ab)) > k


def test_sample_chunk_matches_predict_action(policy):
    obs = obs_batch(policy.config, 2)
    cond = policy.encode_obs(obs, deterministic=True).cond
    for sampler, k in (("ddim", 10), ("ddpm", 20)):
        ref = policy.predict_action(obs, sampler=sampler, steps=k, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            x = sample_chunk(policy, cond, sampler, k, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(policy.normalizer.unnormalize("action", x), ref.chunk, rtol=0, atol=0)


def test_bad_steps_fail_loudly(policy):
    with pytest.raises(ValueError, match="strictly descending"):
        RTISampler(policy, RTIConfig(steps=(1, 2, 0)))
    with pytest.raises(ValueError, match="must end in 0"):
        RTISampler(policy, RTIConfig(steps=(3, 1)))
    with pytest.raises(ValueError, match="gripper_mode"):
        RTIConfig(gripper_mode="binary")
    assert np.isfinite(_contraction(2.0, 30))
