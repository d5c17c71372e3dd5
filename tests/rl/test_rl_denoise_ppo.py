"""PPO over the denoising MDP (rl100.md §12 tests 1-5): sigma table, closed-form log-prob, ratio = 1,
clip gradients, advantage broadcast."""

import dataclasses
import math

import pytest
import torch
from rl_testing import chunk_policy, random_obs
from torch import nn

from policies.diffusion.noise import NoiseSchedule
from policies.rl import denoise_ppo as dp

# rl100.md §2 golden: t -> m sigma(eta=1) for T=100 cosine, K=10, steps_offset 1, prev clamp at 0
SIGMA_GOLDEN = [0.865, 0.713, 0.598, 0.505, 0.422, 0.343, 0.261, 0.166, 0.041, 0.020]


def test_ddim_sigma_table():
    sched = NoiseSchedule(dp.rl100_scheduler())
    tab = dp.sigma_table(sched, steps=10, eta=1.0, sigma_min=0.01, sigma_max=None)
    assert tab.timesteps == list(range(91, 0, -10))
    assert tab.prev_timesteps == list(range(81, 0, -10)) + [0]
    assert torch.allclose(tab.sigma, torch.tensor(SIGMA_GOLDEN), atol=1e-3)
    assert torch.equal(tab.sigma, tab.sigma_clipped)  # sigma_min = 0.01 never binds on this grid
    clipped = dp.sigma_table(sched, sigma_max=0.1).sigma_clipped
    assert int((clipped == 0.1).sum()) == 8 and torch.equal(clipped[8:], tab.sigma[8:])
    clipped = dp.sigma_table(sched, sigma_max=0.8).sigma_clipped
    assert int((clipped < tab.sigma).sum()) == 1 and float(clipped[0]) == pytest.approx(0.8)


@torch.no_grad()
def test_logprob_matches_hand_computed_gaussian():
    """Each step's log-prob equals a Gaussian written out by hand (mean from the unclipped DDIM sigma, density
    with the clipped one, summed over the executed window only), and (x_{k+1} - mu)/sigma~ is the injected z."""
    policy = chunk_policy(sigma_max=0.1)
    c, b = policy.config, 16
    seed = 5
    ch = dp.sample_chain(policy, random_obs(c, b), generator=torch.Generator().manual_seed(seed))
    # replay the sampler's draws: x_K first, then one z per step (all steps are stochastic at eta = 1)
    g = torch.Generator().manual_seed(seed)
    x_k = torch.randn((b, c.horizon, c.action_dim), generator=g)
    torch.testing.assert_close(ch.chain[:, 0], x_k, rtol=0, atol=0)
    abar = policy.schedule.alphas_cumprod
    lo, hi = c.action_start, c.action_start + c.n_action_steps
    d = (hi - lo) * c.action_dim
    for k in range(10):
        t, tp = int(ch.timesteps[k]), int(ch.prev_timesteps[k])
        a_t, a_p = float(abar[t]), float(abar[tp])
        x = ch.chain[:, k]
        eps = policy.denoiser(x, torch.full((b,), t), ch.cond)
        x0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1, 1)
        sigma = math.sqrt((1 - a_p) / (1 - a_t)) * math.sqrt(1 - a_t / a_p)
        mu = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p - sigma ** 2) * eps
        s = min(max(sigma, 0.01), 0.1)
        diff = (ch.chain[:, k + 1] - mu)[:, lo:hi]
        closed = -(diff ** 2).flatten(1).sum(-1) / (2 * s * s) - d * math.log(s) - d / 2 * math.log(2 * math.pi)
        torch.testing.assert_close(ch.log_probs[:, k], closed, rtol=1e-5, atol=1e-3)
        z = torch.randn((b, c.horizon, c.action_dim), generator=g)
        torch.testing.assert_close((ch.chain[:, k + 1] - mu) / s, z, rtol=1e-4, atol=1e-4)


def test_executed_mask_limits_the_sum():
    policy = chunk_policy()
    ch = dp.sample_chain(policy, random_obs(policy.config, 4), generator=torch.Generator().manual_seed(1))
    full = torch.ones(8, 4, dtype=torch.bool)
    lp_full = dp.chain_log_probs(policy, ch.cond, ch.chain, ch.timesteps, ch.prev_timesteps, full)
    lp_exec = dp.chain_log_probs(policy, ch.cond, ch.chain, ch.timesteps, ch.prev_timesteps)
    assert not torch.allclose(lp_full, lp_exec)  # the unexecuted steps really are left out
    m = dp.policy_executed_mask(policy)
    assert m.sum() == 4 * 4 and m[1:5].all() and not m[0].any() and not m[5:].any()
    with pytest.raises(ValueError, match="T=8"):
        dp.executed_mask(8, 4, 6, 4)


def test_ratio_is_one_before_update():
    policy = chunk_policy()
    ch = dp.sample_chain(policy, random_obs(policy.config, 6), generator=torch.Generator().manual_seed(2))
    new = dp.chain_log_probs(policy, ch.cond, ch.chain, ch.timesteps, ch.prev_timesteps)
    ratio = (new - ch.log_probs).exp()
    assert torch.equal(ratio, torch.ones_like(ratio))  # same code path -> bit-exact, not just close
    # the clip does not bind at r = 1, so the clipped loss has the unclipped (vanilla PG) gradient
    adv = dp.broadcast_advantage(torch.randn(6, generator=torch.Generator().manual_seed(0)), 10)
    params = list(policy.denoiser.parameters())
    g_clip = torch.autograd.grad(dp.clipped_surrogate(new, ch.log_probs, adv, 0.2).loss, params, retain_graph=True)
    g_plain = torch.autograd.grad(-(ratio_fn(new, ch.log_probs) * adv).mean(0).sum(), params)
    for a, b in zip(g_clip, g_plain):
        torch.testing.assert_close(a, b)
    assert any(float(g.abs().sum()) > 0 for g in g_clip)


def ratio_fn(new, old):
    return (new - old.detach()).exp()


def test_dropout_in_train_mode_fails_early():
    policy = chunk_policy()
    policy.denoiser.extra = nn.Dropout(0.1)
    policy.train()
    with pytest.raises(ValueError, match="extra"):
        dp.sample_chain(policy, random_obs(policy.config, 2))


@pytest.mark.parametrize("adv_sign", [1.0, -1.0])
def test_ppo_clip_zero_gradient_outside_the_trust_region(adv_sign):
    eps = 0.2
    # ratios: far above, inside, far below the [0.8, 1.2] band
    ratios = torch.tensor([[1.5, 1.05, 0.5]])
    new = ratios.log().clone().requires_grad_(True)
    old = torch.zeros_like(new)
    adv = torch.full_like(new, adv_sign)
    dp.clipped_surrogate(new, old, adv, eps).loss.backward()
    grad = new.grad[0]
    # d(-r A)/d log r = -r A where the clip does not bind
    assert float(grad[1]) == pytest.approx(-1.05 * adv_sign, rel=1e-6)
    if adv_sign > 0:  # A > 0: pushing r above 1+eps earns nothing -> 0; below 1-eps it is still pulled up
        assert float(grad[0]) == 0.0 and float(grad[2]) == pytest.approx(-0.5, rel=1e-6)
    else:  # A < 0: pushing r below 1-eps earns nothing -> 0; above 1+eps it is still pushed down
        assert float(grad[2]) == 0.0 and float(grad[0]) == pytest.approx(1.5, rel=1e-6)
    out = dp.clipped_surrogate(new.detach(), old, adv, eps)
    assert float(out.clip_frac) == pytest.approx(2 / 3)


def test_advantage_broadcast():
    adv = torch.tensor([1.0, -2.0, 0.5])
    a = dp.broadcast_advantage(adv, 10)
    assert a.shape == (3, 10) and torch.equal(a, adv[:, None].expand(3, 10))  # RL-100: same A at every step
    d = dp.broadcast_advantage(adv, 10, gamma_denoise=0.9)
    factors = torch.tensor([0.9 ** (10 - 1 - k) for k in range(10)])  # k = 0 noisiest step
    torch.testing.assert_close(d, adv[:, None] * factors)
    assert torch.equal(d[:, -1], adv)
    # through the surrogate: every step's log-prob gets the same push d loss / d logp_k = -A / B at ratio 1
    new = torch.zeros(3, 10, requires_grad=True)
    dp.clipped_surrogate(new, torch.zeros(3, 10), a, 0.2).loss.backward()
    torch.testing.assert_close(new.grad, -a / 3)


@pytest.mark.parametrize("update", ["per_step", "batched"])
def test_ppo_update_first_ratio_is_one_and_moves_weights(update):
    policy = chunk_policy()
    ch = dp.sample_chain(policy, random_obs(policy.config, 8), generator=torch.Generator().manual_seed(3))
    before = [p.detach().clone() for p in policy.denoiser.parameters()]
    opt = torch.optim.Adam(policy.denoiser.parameters(), lr=1e-3)
    stats = dp.ppo_update(policy, opt, ch, dp.normalize_advantage(torch.randn(8)), dp.DenoisePPOConfig(update=update))
    if update == "batched":
        assert stats["ratio_max_dev"] == 0.0  # all K ratios are taken before the single step
    else:
        assert stats["ratio_max_dev"] > 0.0  # step k+1 sees the weights after step k (the official code)
    assert any(not torch.equal(a, p) for a, p in zip(before, policy.denoiser.parameters()))


def test_max_grad_norm_zero_means_no_clipping():
    """ppo.max_grad_norm 0 turns clipping off, like None (clipping to a norm of 0 would zero every update)."""
    after = {}
    for norm in (None, 0.0):
        policy = chunk_policy()
        ch = dp.sample_chain(policy, random_obs(policy.config, 8), generator=torch.Generator().manual_seed(3))
        before = [p.detach().clone() for p in policy.denoiser.parameters()]
        opt = torch.optim.SGD(policy.denoiser.parameters(), lr=1e-2)
        dp.ppo_update(policy, opt, ch, dp.normalize_advantage(torch.linspace(-1, 1, 8)),
                      dp.DenoisePPOConfig(max_grad_norm=norm))
        after[norm] = [p.detach() for p in policy.denoiser.parameters()]
        assert any(not torch.equal(a, p) for a, p in zip(before, after[norm])), norm
    assert all(torch.equal(a, b) for a, b in zip(after[None], after[0.0]))


def test_mean_logprob_ratio_is_the_per_dim_geometric_mean():
    """logprob "mean" (DPPO): each step's ratio is the "sum" ratio (RL-100) to the power 1 / (executed dims), so the
    same clip_eps is a much wider trust region; the stored behaviour log-probs stay sums."""
    policy = chunk_policy()
    ch = dp.sample_chain(policy, random_obs(policy.config, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for p in policy.denoiser.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        log_ratio = dp.chain_log_probs(policy, ch.cond, ch.chain, ch.timesteps, ch.prev_timesteps) - ch.log_probs
    n = int(dp.policy_executed_mask(policy).sum())
    frozen = torch.optim.SGD(policy.denoiser.parameters(), lr=0.0)  # measures the ratios, moves nothing
    adv = dp.normalize_advantage(torch.randn(8))
    for mode, expected in (("sum", log_ratio), ("mean", log_ratio / n)):
        cfg = dp.DenoisePPOConfig(update="batched", logprob=mode, clip_eps=0.5)
        got = dp.ppo_update(policy, frozen, ch, adv, cfg)["ratio_max_dev"]
        assert got == pytest.approx(float((expected.exp() - 1).abs().max()), rel=1e-4)
    assert n > 1 and float(log_ratio.abs().max()) > 1e-2  # the two modes really differ here
    with pytest.raises(Exception, match="denoise_ppo.logprob"):
        dp.DenoisePPOConfig(logprob="median")


def test_config_validation_names_the_key():
    from robotstack.core.errors import ConfigError

    with pytest.raises(ConfigError, match="denoise_ppo.update"):
        dp.DenoisePPOConfig(update="sometimes")
    with pytest.raises(ConfigError, match="eta"):
        dp.DenoisePPOConfig(eta=0.0)


def test_ratio_is_one_with_a_trained_vib_encoder_only_with_deterministic_features():
    """Online, the encoder is trained too, so cond is re-encoded in the update. In train mode a VIB encoder
    samples its latent; deterministic_cond (VIB mean) keeps the first ratio at exactly 1, a sampled one does not."""
    from policies.diffusion import DiffusionPolicy

    torch.manual_seed(0)
    base = chunk_policy()
    policy = DiffusionPolicy(base.config.replace(encoder=dataclasses.replace(base.config.encoder, vib=True)))
    policy.normalizer.load_state_dict(base.normalizer.state_dict())
    policy.train()
    obs = random_obs(policy.config, 6)
    ch = dp.sample_chain(policy, obs, generator=torch.Generator().manual_seed(2))
    cond = dp.deterministic_cond(policy, obs)
    new = dp.chain_log_probs(policy, cond, ch.chain, ch.timesteps, ch.prev_timesteps)
    assert torch.equal(new, ch.log_probs)
    assert cond.requires_grad  # the encoder gets PPO gradients through it
    sampled = policy.encode_obs(obs).cond  # train mode -> reparameterised sample
    new = dp.chain_log_probs(policy, sampled, ch.chain, ch.timesteps, ch.prev_timesteps)
    assert not torch.allclose(new, ch.log_probs)


def test_sample_chain_from_cached_features_equals_sampling_from_obs():
    """The offline stage samples from its cached frozen-encoder features (cond=) instead of re-encoding the
    observations (camera frames) each batch: same generator -> the same chain, log-probs and actions."""
    policy = chunk_policy()
    obs = random_obs(policy.config, 6, seed=3)
    a = dp.sample_chain(policy, obs, steps=4, generator=torch.Generator().manual_seed(7))
    cond = policy.encode_obs(obs, deterministic=True).cond
    b = dp.sample_chain(policy, None, steps=4, generator=torch.Generator().manual_seed(7), cond=cond)
    for name in ("chain", "log_probs", "timesteps", "prev_timesteps", "cond", "action", "chunk"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    with pytest.raises(ValueError, match="exactly one of obs and cond"):
        dp.sample_chain(policy, obs, steps=4, cond=cond)
