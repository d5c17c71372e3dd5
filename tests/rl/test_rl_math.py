"""GAE, the OPE gate and AM-Q (rl100.md §12 tests 7-9), hand-computed or against exact MDP solutions."""

import copy

import numpy as np
import pytest
import torch
from rl_testing import bandit_policy

from policies.rl import denoise_ppo as dp
from robotstack.train import rl_math as rm

# ---------------------------------------------------------------------------------------------- GAE
R = [1.0, 0.0, 2.0]
V = [0.5, 1.0, 1.5]
NV = [1.0, 4.0, 3.0]  # next_values[1] = V(s_final) of the real last obs where the episode ends at t = 1
NO = [False, False, False]


def test_gae_terminal_stops_bootstrapping():
    adv, ret = rm.gae(R, V, NV, [False, True, False], NO, gamma=0.9, lam=0.8)
    # delta = [1 + .9*1 - .5, 0 - 1 (no bootstrap), 2 + .9*3 - 1.5]; A1 does not flow into A0 past the end
    np.testing.assert_allclose(adv, [1.4 + 0.72 * -1.0, -1.0, 3.2])
    np.testing.assert_allclose(ret, adv + np.array(V))


def test_gae_truncation_bootstraps_from_the_final_value():
    adv, _ = rm.gae(R, V, NV, NO, [False, True, False], gamma=0.9, lam=0.8)
    np.testing.assert_allclose(adv, [1.4 + 0.72 * 2.6, 0.9 * 4.0 - 1.0, 3.2])


def test_gae_chunk_discount_is_gamma_to_the_nc():
    adv, _ = rm.gae(R, V, NV, NO, NO, gamma=0.9, lam=0.8, n_c=2)
    g = 0.81  # 0.9^2 between decisions
    d = [1 + g * 1.0 - 0.5, 0 + g * 4.0 - 1.0, 2 + g * 3.0 - 1.5]
    a2 = d[2]
    a1 = d[1] + g * 0.8 * a2
    np.testing.assert_allclose(adv, [d[0] + g * 0.8 * a1, a1, a2])


def test_gae_lambda_one_is_the_discounted_return_and_envs_are_independent():
    v = np.array([0.5, 1.0, 1.5])
    nv = np.array([1.0, 1.5, 3.0])  # consistent: V(s_{t+1}) = values[t+1]
    _, ret = rm.gae(R, v, nv, NO, NO, gamma=0.9, lam=1.0)
    assert ret[0] == pytest.approx(1 + 0.9 * 0 + 0.81 * 2 + 0.729 * 3.0)
    # (N, E): two envs side by side give the single-env answers column by column
    a_term, _ = rm.gae(R, V, NV, [False, True, False], NO, 0.9, 0.8)
    a_trunc, _ = rm.gae(R, V, NV, NO, [False, True, False], 0.9, 0.8)
    col = np.stack
    a2, _ = rm.gae(col([R, R], 1), col([V, V], 1), col([NV, NV], 1), col([[0, 1, 0], [0, 0, 0]], 1).astype(bool),
                   col([[0, 0, 0], [0, 1, 0]], 1).astype(bool), 0.9, 0.8)
    np.testing.assert_allclose(a2, col([a_term, a_trunc], 1))
    with pytest.raises(ValueError, match="values"):
        rm.gae(R, V[:2], NV, NO, NO)


# ---------------------------------------------------------------------------------------------- gate
def test_gate_delta_rule_and_strict_variant():
    d = rm.ope_gate(10.5, 10.0)  # +5% exactly: accepted (>=)
    assert d.accepted and not d.reverted and d.margin == pytest.approx(0.5)
    d = rm.ope_gate(10.4, 10.0)  # +4%: rejected and reverted
    assert not d.accepted and d.reverted
    d = rm.ope_gate(-9.6, -10.0)  # negative AM-Q: the margin uses |old| -> needs >= -9.5
    assert not d.accepted and d.reverted
    assert rm.ope_gate(-9.5, -10.0).accepted
    s = rm.ope_gate(10.01, 10.0, mode="strict_no_revert")  # the official code: any strict improvement
    assert s.accepted and not s.reverted and s.margin == 0.0
    s = rm.ope_gate(10.0, 10.0, mode="strict_no_revert")
    assert not s.accepted and not s.reverted
    assert not rm.ope_gate(float("nan"), 1.0).accepted  # a blown-up OPE never accepts
    assert set(d.as_dict()) == {"amq_old", "amq_new", "delta", "margin", "accepted", "reverted", "mode"}
    with pytest.raises(ValueError, match="mode"):
        rm.ope_gate(1.0, 1.0, mode="maybe")


GOAL = 0.5


def toy_amq(policy):
    """Static-state toy MDP (s' = s) with reward -|a - 0.5| and a known Q = r / (1 - gamma); the policy's
    deterministic DDIM action from fixed noise (common random numbers across candidates)."""
    states = np.zeros((64, 1), np.float32)

    def policy_fn(s):
        obs = {"state": torch.as_tensor(s)[:, None, :]}
        return policy.predict_action(obs, generator=torch.Generator().manual_seed(0)).action[:, 0].numpy()

    def reward_fn(s, a):
        return -np.abs(a[:, 0] - GOAL)

    return rm.am_q(states, policy_fn, lambda s, a: s, lambda s, a: reward_fn(s, a) / (1 - 0.9), horizon=2,
                   reward_fn=reward_fn, gamma=0.9).value


def shifted(policy, lo, hi, seed):
    """A candidate whose actions land in [lo, hi] (the action normalizer maps [-1, 1] there) and whose denoiser
    weights differ slightly, so its ratio against the behaviour policy is not 1."""
    cand = copy.deepcopy(policy)
    scale = 2.0 / (hi - lo)
    cand.normalizer.set_stats("action", scale=np.array([scale], np.float32),
                              offset=np.array([-1.0 - lo * scale], np.float32))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in cand.denoiser.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return cand


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gate_rejects_worse_and_accepts_better_with_revert():
    behaviour = bandit_policy()
    base = snapshot(behaviour)
    amq_old = toy_amq(behaviour)

    worse = shifted(behaviour, -3.0, -2.0, seed=1)  # mean action shifted into a low-Q region
    dec = rm.ope_gate(toy_amq(worse), amq_old)
    assert dec.amq_new < dec.amq_old and not dec.accepted and dec.reverted
    rm.apply_gate(dec, worse, behaviour)
    assert same(snapshot(behaviour), base)  # pi_old unchanged
    assert same(snapshot(worse), base)  # the candidate is reverted to pi_old

    strict_worse = shifted(behaviour, -3.0, -2.0, seed=1)
    dec = rm.ope_gate(toy_amq(strict_worse), amq_old, mode="strict_no_revert")
    kept = snapshot(strict_worse)
    rm.apply_gate(dec, strict_worse, behaviour)
    assert not dec.accepted and same(snapshot(strict_worse), kept)  # official code: keeps training, no revert

    better = shifted(behaviour, 0.45, 0.55, seed=2)
    obs = {"state": torch.zeros(16, 1, 1)}
    ch = dp.sample_chain(behaviour, obs, generator=torch.Generator().manual_seed(3))
    new = dp.chain_log_probs(better, ch.cond, ch.chain, ch.timesteps, ch.prev_timesteps)
    assert not torch.allclose(new, ch.log_probs)  # before acceptance the candidate is a different policy
    dec = rm.ope_gate(toy_amq(better), amq_old)
    assert dec.amq_new - dec.amq_old > 0.05 * abs(dec.amq_old) and dec.accepted and not dec.reverted
    rm.apply_gate(dec, better, behaviour)
    assert same(snapshot(behaviour), snapshot(better))  # pi_old <- pi
    ch = dp.sample_chain(behaviour, obs, generator=torch.Generator().manual_seed(4))
    new = dp.chain_log_probs(better, ch.cond, ch.chain, ch.timesteps, ch.prev_timesteps)
    assert torch.equal(new, ch.log_probs)  # the next ratio is exactly 1


# ---------------------------------------------------------------------------------------------- AM-Q
# 3-state MDP: states 0, 1 live, 2 terminal (absorbing); 2 actions; stochastic dynamics and policy
P = np.array([[[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]],
              [[0.5, 0.4, 0.1], [0.0, 0.3, 0.7]]])  # P[s, a, s']
RW = np.array([[0.0, 1.0], [2.0, -1.0]])  # r(s, a)
PI = np.array([[0.3, 0.7], [0.6, 0.4]])  # pi(a | s)
GAMMA = 0.9


def exact_q():
    """Q^pi by a linear solve: Q = r + gamma P_live (pi Q); the terminal state contributes 0."""
    n = 4  # (s, a) pairs of live states
    m = np.zeros((n, n))
    for s in range(2):
        for a in range(2):
            for s2 in range(2):
                for a2 in range(2):
                    m[2 * s + a, 2 * s2 + a2] = P[s, a, s2] * PI[s2, a2]
    q = np.linalg.solve(np.eye(n) - GAMMA * m, RW.reshape(-1))
    return q.reshape(2, 2)


def sample_next(s, a, rng, p=P):
    u = rng.random(len(s))
    return (u[:, None] > np.cumsum(p[s, a], -1)).sum(-1).clip(max=2)


def test_amq_equals_monte_carlo_under_the_exact_model():
    q = exact_q()
    v0 = float(PI[0] @ q[0])
    rng = np.random.default_rng(0)
    b = 40000

    def policy_fn(s):
        s_live = np.minimum(s, 1)
        return (rng.random(len(s)) > PI[s_live, 0]).astype(int)

    def model_fn(s, a):  # the exact model: a sample of the true dynamics (terminal stays terminal)
        return np.where(s == 2, 2, sample_next(np.minimum(s, 1), a, rng))

    def q_fn(s, a):
        return np.where(s == 2, 0.0, q[np.minimum(s, 1), a])

    def r_fn(s, a):
        return RW[np.minimum(s, 1), a]

    amq = rm.am_q(np.zeros(b, int), policy_fn, model_fn, q_fn, horizon=3, reward_fn=r_fn, gamma=GAMMA,
                  terminal_fn=lambda s: s == 2)
    # Monte Carlo in the true MDP, no Q anywhere: discounted return until termination (or 0.9^200 ~ 7e-10)
    s, alive, ret = np.zeros(b, int), np.ones(b, bool), np.zeros(b)
    for t in range(200):
        a = policy_fn(s)
        ret += np.where(alive, GAMMA ** t * RW[np.minimum(s, 1), a], 0.0)
        s = model_fn(s, a)
        alive &= s != 2
    se = np.hypot(amq.per_start.std(), ret.std()) / np.sqrt(b)
    assert abs(amq.value - ret.mean()) < 4 * se
    assert abs(amq.value - v0) < 4 * amq.per_start.std() / np.sqrt(b)
    # H = 0 is plain Q(s_0, pi(s_0)): no model step, no reward needed
    ones = rm.am_q(np.zeros(3, int), lambda s: np.ones_like(s), model_fn, q_fn, horizon=0)
    np.testing.assert_allclose(ones.per_start, q[0, 1])


def test_amq_is_exact_for_a_deterministic_mdp_in_both_estimators():
    """Deterministic chain 0 -> 1 -> ... -> 5 (terminal), reward s: every estimate is exact, not just close."""
    gamma = 0.8

    def q_true(s, a):  # Q^pi(s) = sum_{j >= s, j < 5} gamma^{j-s} j
        return np.array([sum(gamma ** (j - si) * j for j in range(si, 5)) for si in s])

    model, pol, rew = (lambda s, a: np.minimum(s + 1, 5)), (lambda s: np.zeros_like(s)), (lambda s, a: s * 1.0)
    starts = np.array([0, 2, 4])
    for h in range(0, 7):
        amq = rm.am_q(starts, pol, model, q_true, horizon=h, reward_fn=rew, gamma=gamma,
                      terminal_fn=lambda s: s >= 5)
        np.testing.assert_allclose(amq.per_start, q_true(starts, None), rtol=1e-12)
    # the code's estimator: the mean of Q along the model rollout = the mean of Q^pi along the true rollout
    amq = rm.am_q(np.array([0]), pol, model, q_true, horizon=3, estimator="mean_q", terminal_fn=lambda s: s >= 5)
    assert amq.value == pytest.approx(np.mean(q_true(np.array([0, 1, 2]), None)))
    amq = rm.am_q(np.array([3]), pol, model, q_true, horizon=4, estimator="mean_q", terminal_fn=lambda s: s >= 5)
    assert amq.value == pytest.approx(np.mean(q_true(np.array([3, 4]), None)))  # rows stop at the terminal
    with pytest.raises(ValueError, match="reward_fn"):
        rm.am_q(starts, pol, model, q_true, horizon=2)
