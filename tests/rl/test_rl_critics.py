"""IQL critics (rl100.md §4.2, §12 test 6): expectile, double-Q min, chunk TD targets, value warm-start."""

import numpy as np
import pytest
import torch
import rl_testing  # noqa: F401  (pins torch to one thread)

from policies.rl import critics as cr


def exact_expectile(values, tau):
    """Root of tau E[(q - v)+] = (1 - tau) E[(v - q)+] by bisection (independent of the torch loss)."""
    q = np.asarray(values, float)
    lo, hi = q.min(), q.max()
    for _ in range(200):
        v = 0.5 * (lo + hi)
        f = tau * np.clip(q - v, 0, None).mean() - (1 - tau) * np.clip(v - q, 0, None).mean()
        lo, hi = (v, hi) if f > 0 else (lo, v)
    return 0.5 * (lo + hi)


def fit_constant(q, tau):
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([v], lr=1.0, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = cr.expectile_loss(q - v, tau)
        loss.backward()
        return loss

    opt.step(closure)
    return float(v.detach())


@pytest.mark.parametrize("tau", [0.5, 0.7, 0.9, 0.999])
def test_expectile_of_a_known_distribution(tau):
    q = torch.tensor([0.0] * 4 + [1.0] * 3 + [2.0] * 2 + [10.0], dtype=torch.float64)
    v = fit_constant(q, tau)
    assert v == pytest.approx(exact_expectile(q.numpy(), tau), abs=1e-4)
    if tau == 0.5:
        assert v == pytest.approx(1.7, abs=1e-4)  # the mean
    if tau == 0.999:
        assert v > 9.0  # tau -> 1: towards the max over the data


def test_iql_on_a_synthetic_bandit():
    """One state, data actions {-1, 0, 1} equally often with terminal rewards {0, 1, 3}: Q fits r(a), V fits the
    0.7-expectile of Q over the data actions (1.75, above the mean 1.33), and only the best action has A > 0."""
    torch.manual_seed(0)
    feat = torch.zeros(96, 4)
    actions = torch.tensor([-1.0, 0.0, 1.0]).repeat(32)[:, None]
    rewards = torch.tensor([0.0, 1.0, 3.0]).repeat(32)
    q_net, v_net = cr.DoubleQ(4, 1, hidden=(32, 32)), cr.ValueNet(4, hidden=(32, 32))
    q_opt, v_opt = torch.optim.Adam(q_net.parameters(), 1e-2), torch.optim.Adam(v_net.parameters(), 1e-2)
    target = cr.td_target(rewards, torch.zeros(96), torch.ones(96), gamma=0.99)  # terminal: no bootstrap
    for _ in range(400):
        q_opt.zero_grad()
        cr.iql_q_loss(*q_net(feat, actions), target).backward()
        q_opt.step()
        v_opt.zero_grad()
        with torch.no_grad():
            qt = q_net.min_q(feat, actions)
        cr.iql_value_loss(v_net(feat), qt, tau=0.7).backward()
        v_opt.step()
    with torch.no_grad():
        q_min = q_net.min_q(feat[:3], actions[:3])
        v = v_net(feat[:1])
        adv = cr.iql_advantage(q_min, v.expand(3))
    np.testing.assert_allclose(q_min.numpy(), [0.0, 1.0, 3.0], atol=0.05)
    assert float(v) == pytest.approx(exact_expectile([0.0, 1.0, 3.0], 0.7), abs=0.05)
    assert float(adv[2]) > 0 > float(adv[1]) > float(adv[0])


def test_double_q_takes_the_min():
    q = cr.DoubleQ(3, 2, hidden=(8,))
    feat, act = torch.randn(5, 3), torch.randn(5, 1, 2)
    q1, q2 = q(feat, act)
    assert q1.shape == (5,) and not torch.equal(q1, q2)
    torch.testing.assert_close(q.min_q(feat, act), torch.minimum(q1, q2))


def test_chunk_reward_sum_and_td_target():
    r = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    s = cr.chunk_reward_sum(r, 0.9)
    torch.testing.assert_close(s, torch.tensor([1.0 + 2.0 * 0.81, 0.0]))
    next_v = torch.tensor([5.0, 5.0])
    # bootstrap discount is gamma^{n_c}, not gamma: a 3-step chunk discounts V(s') by 0.9^3
    tgt = cr.td_target(s, next_v, torch.tensor([False, False]), 0.9, n_steps=3)
    torch.testing.assert_close(tgt, s + 0.729 * 5.0)
    tgt = cr.td_target(s, next_v, torch.tensor([True, False]), 0.9, n_steps=3)
    torch.testing.assert_close(tgt, torch.tensor([2.62, 0.729 * 5.0]))  # terminated: no bootstrap
    # a decision cut after 2 steps by a truncation bootstraps with gamma^2 from V(s_final)
    tgt = cr.td_target(s, next_v, torch.tensor([False, False]), 0.9, n_steps=torch.tensor([3, 2]))
    torch.testing.assert_close(tgt, torch.tensor([2.62 + 0.729 * 5.0, 0.81 * 5.0]))
    # single-action mode: gamma^1 (fork H found upstream's non-chunk discount wrong)
    tgt = cr.td_target(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([False]), 0.99)
    torch.testing.assert_close(tgt, torch.tensor([1.0 + 0.99 * 2.0]))


def test_soft_update_and_value_warm_start():
    src, tgt = cr.ValueNet(4, (8,)), cr.ValueNet(4, (8,))
    before = [p.detach().clone() for p in tgt.parameters()]
    cr.soft_update(tgt, src, tau=0.25)
    for b, t, s in zip(before, tgt.parameters(), src.parameters()):
        torch.testing.assert_close(t.detach(), 0.75 * b + 0.25 * s.detach())
    x = torch.randn(6, 4)
    online = cr.warm_start_value(src, cr.ValueNet(4, (8,)))
    torch.testing.assert_close(online(x), src(x))
    copy = cr.warm_start_value(src)
    assert copy is not src and torch.equal(copy(x), src(x))
    with pytest.raises(ValueError, match="shape"):
        cr.warm_start_value(src, cr.ValueNet(4, (16,)))


def test_expectile_rejects_bad_tau():
    with pytest.raises(ValueError, match="tau"):
        cr.expectile_loss(torch.zeros(3), 1.0)


def test_clipped_value_loss():
    v_old, target = torch.zeros(2), torch.tensor([1.0, 1.0])
    v_new = torch.tensor([0.5, 0.1], requires_grad=True)
    loss = cr.clipped_value_loss(v_new, v_old, target, clip_eps=0.2)
    loss.backward()
    # row 0 moved 0.5 > eps from V_old: the clipped term (0.2 - 1)^2 = 0.64 > 0.25 dominates -> no gradient
    # row 1 inside the band: plain MSE gradient (0.1 - 1) / 2
    assert float(loss.detach()) == pytest.approx(0.5 * (0.64 + 0.81) / 2)
    torch.testing.assert_close(v_new.grad, torch.tensor([0.0, -0.45]))
    plain = cr.clipped_value_loss(v_new.detach(), v_old, target, clip_eps=None)
    assert float(plain) == pytest.approx(0.5 * (0.25 + 0.81) / 2)
