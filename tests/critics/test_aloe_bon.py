"""ALOE-style current-policy evaluation, pessimism, advantage weights / AWR and best-of-N (dqc_aloe.md §5 tests
6-9) on the 5-state chain, against the exact values of chain_mdp.py."""

import numpy as np
import pytest
import torch

import chain_mdp as cm
from policies.critics import (AloeCritic, ChunkCritic, ChunkCriticConfig, DQCCritics, advantage_weights,
                              aloe_advantage, aloe_target, best_of_n, critic_td_loss, ensemble_scores,
                              intervention_weights, pessimistic_value)

ALL_CHUNKS = cm.chunk_tensor(cm.CHUNKS)


def test_aloe_evaluates_the_current_policy_from_uniform_data():
    """Spec test 7: data from a uniform behaviour, bootstrap with pi(R) = 0.7 (exact expectation over its 4
    chunks) and the ensemble min -> Q^pi_2 and V^pi, not the behaviour's values."""
    v_ref, q_ref, pc = cm.policy_eval(0.7)
    b = cm.chain_batch(2)
    aloe = AloeCritic(cm.TabularQ(2, 2, terminal_alias=True), gamma=cm.GAMMA, tau=0.2)
    nxt = ALL_CHUNKS[:, None].expand(4, 16, 2, 1)  # (M, B, h, Da): every chunk, weighted by pi
    w = torch.as_tensor(pc, dtype=torch.float32)
    cm.fit(aloe.critic.parameters(), lambda: aloe.loss(b["obs"], b["actions"], b["reward_sum"], b["h_eff"],
                                                        b["done"], b["next_obs"], nxt, sample_weight=w,
                                                        weight=b["complete"]), 600, 0.1, aloe.update_target)
    obs = cm.state_obs(np.repeat(np.arange(4), 4))
    q = aloe.critic(obs, ALL_CHUNKS.repeat(4, 1, 1)).detach().reshape(2, 4, 4)
    for member in q.numpy():
        assert member == pytest.approx(q_ref, abs=5e-3)
    v = pessimistic_value(q.permute(0, 2, 1), w).numpy()  # (K, M=4 chunks, B=4 states) -> V^pi
    assert v == pytest.approx(v_ref[:4], abs=5e-3)


def test_min_target_is_pessimistic():
    """Spec test 8: min-ensemble target <= mean-ensemble target elementwise; equal when members agree."""
    g = torch.Generator().manual_seed(0)
    nq = torch.rand(3, 5, 8, generator=g)
    args = torch.rand(8, generator=g), torch.full((8,), 2), torch.zeros(8, dtype=torch.bool)
    lo, mean = aloe_target(*args, nq, 0.9), aloe_target(*args, nq, 0.9, agg="mean")
    assert (lo <= mean + 1e-7).all() and (lo < mean).any()
    same = nq[:1].expand(3, 5, 8)
    assert torch.allclose(aloe_target(*args, same, 0.9), aloe_target(*args, same, 0.9, agg="mean"))
    done = torch.ones(8, dtype=torch.bool)
    assert torch.allclose(aloe_target(args[0], args[1], done, nq, 0.9), args[0])  # no bootstrap at a terminal


@pytest.mark.parametrize("agg", ["min", "mean"])
def test_aloe_critic_bootstraps_with_its_configured_aggregate(agg):
    """aloe.agg: the target aggregates the target members' values at the policy's chunks by min (ALOE's pessimism)
    or mean; the two differ when members disagree, and an unknown aggregate is refused."""
    torch.manual_seed(0)
    aloe = AloeCritic(ChunkCritic(obs_dim=3, action_dim=1, chunk_len=2, num_qs=3), gamma=0.9, agg=agg)
    g = torch.Generator().manual_seed(1)
    obs, next_obs = torch.rand(8, 3, generator=g), torch.rand(8, 3, generator=g)
    actions, nxt = torch.rand(8, 2, 1, generator=g), torch.rand(4, 8, 2, 1, generator=g)  # (M, B, h, Da)
    r, h, done = torch.rand(8, generator=g), torch.full((8,), 2), torch.zeros(8, dtype=torch.bool)
    nq = aloe.target(next_obs.repeat(4, 1), nxt.reshape(32, 2, 1)).reshape(3, 4, 8).detach()
    want = {a: critic_td_loss(aloe.critic(obs, actions), aloe_target(r, h, done, nq, 0.9, agg=a), "linear")
            for a in ("min", "mean")}
    got = aloe.loss(obs, actions, r, h, done, next_obs, nxt)
    assert torch.allclose(got, want[agg]) and not torch.allclose(want["min"], want["mean"])
    with pytest.raises(ValueError, match="agg"):
        AloeCritic(ChunkCritic(3, 1, 2), agg="max")


def awr_fit(weights):
    """Tabular categorical policy over the 4 chunks at s = 2 on uniform data: max sum_c w_c log pi(c)."""
    logits = torch.zeros(4, requires_grad=True)
    cm.fit([logits], lambda: -(weights * torch.log_softmax(logits, 0)).sum(), 600, 0.1)
    return torch.softmax(logits, 0).detach().numpy()


@pytest.mark.parametrize("mode", ["exp_clip", "batch_softmax"])
def test_awr_closed_form(mode):
    """Spec test 9: A = min_i Q_i - E_pi min_i Q_i at s = 2 (exact Q^pi_2), beta = 0.1 -> pi_new ~ exp(A / beta)."""
    v_ref, q_ref, pc = cm.policy_eval(0.7)
    q_data = torch.as_tensor(np.stack([q_ref[2], q_ref[2] + 0.05]), dtype=torch.float32)  # (K, B=4 chunks)
    q_pol = q_data[:, :, None].expand(2, 4, 4)  # (K, M=4 chunks, B=4 samples)
    adv = aloe_advantage(q_data, q_pol, torch.as_tensor(pc, dtype=torch.float32))
    assert adv.numpy() == pytest.approx(q_ref[2] - v_ref[2], abs=1e-6)  # the min member is Q^pi_2 itself
    pi = awr_fit(advantage_weights(adv, 0.1, mode))
    assert pi == pytest.approx([0.0072, 0.0401, 0.0401, 0.9126], abs=2e-3)


def test_advantage_weights_clip_and_normalise():
    adv = torch.tensor([-1.0, 0.0, 0.5, 100.0])
    w = advantage_weights(adv, beta=1.0, mode="exp_clip", w_max=20.0)
    assert torch.allclose(w, torch.tensor([np.exp(-1.0), 1.0, np.exp(0.5), 20.0], dtype=torch.float32))
    assert torch.isfinite(advantage_weights(torch.tensor([1e6]), 1e-3)).all()
    s = advantage_weights(adv, beta=2.0, mode="batch_softmax")
    assert s.mean().item() == pytest.approx(1.0) and torch.allclose(s / s[1], torch.exp(adv / 2.0) / 1.0)
    n = advantage_weights(adv, beta=1.0, mode="norm_exp_clip")
    assert torch.allclose(n, advantage_weights(3.0 * adv + 7.0, beta=1.0, mode="norm_exp_clip"))  # scale-free
    assert advantage_weights(adv, 1.0, "norm_exp_clip", w_max=2.0).max().item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="beta"):
        advantage_weights(adv, 0.0)
    with pytest.raises(ValueError, match="mode"):
        advantage_weights(adv, 1.0, "softmax")


def test_intervention_weights():
    flag = torch.tensor([True, False, True])
    assert intervention_weights(flag).tolist() == [1.0, 1.0, 1.0]
    assert intervention_weights(flag, "drop").tolist() == [0.0, 1.0, 0.0]
    assert intervention_weights(flag, "weight", 2.5).tolist() == [2.5, 1.0, 2.5]
    with pytest.raises(ValueError, match="mode"):
        intervention_weights(flag, "filter")


def bandit_critic():
    """The one-state bandit of §6: Q*_2 at s = 2 (values 0.59049, 0.729, 0.729, 0.9) in a linear table."""
    _, _, q2 = cm.optimal()
    q = cm.TabularQ(2, 2)
    with torch.no_grad():
        q.table[:, :4] = torch.as_tensor(q2, dtype=torch.float32)
    return q, q2[2]


def test_best_of_n_picks_the_argmax_first_on_ties():
    q, values = bandit_critic()
    cands = ALL_CHUNKS[[0, 1, 3, 2, 3]][None].expand(3, 5, 2, 1)  # LL LR RR RL RR: RR twice
    scores = ensemble_scores(q, cm.state_obs([2, 2, 2]), cands, "mean").detach()
    assert scores[0].numpy() == pytest.approx(values[[0, 1, 3, 2, 3]], abs=1e-6)
    chosen, idx = best_of_n(scores, cands)
    assert idx.tolist() == [2, 2, 2] and torch.equal(chosen[0], ALL_CHUNKS[3])
    # per-row argmax with a stub score table
    stub = torch.tensor([[0.1, 0.3, 0.2], [0.5, 0.5, 0.4]])
    _, idx = best_of_n(stub, torch.arange(6.0).reshape(2, 3, 1, 1))
    assert idx.tolist() == [1, 0]


@pytest.mark.parametrize("n, p", [(1, 0.25), (4, 0.6836), (8, 0.8999), (32, 0.9999)])
def test_best_of_n_finds_the_best_of_four_with_the_documented_probability(n, p):
    assert 1 - 0.75**n == pytest.approx(p, abs=1e-4)
    q, _ = bandit_critic()
    trials = 4000
    idx = torch.randint(0, 4, (trials, n), generator=torch.Generator().manual_seed(n))
    cands = ALL_CHUNKS[idx]  # (trials, N, 2, 1), uniform proposals
    chosen, _ = best_of_n(ensemble_scores(q, cm.state_obs([2] * trials), cands, "min"), cands)
    hit = (chosen == ALL_CHUNKS[3]).all(-1).all(-1).float().mean().item()
    assert hit == pytest.approx(1 - 0.75**n, abs=4 * np.sqrt(p * (1 - p) / trials) + 1e-3)


def test_dqc_scores_only_the_executed_actions():
    """A partial critic over h_a = 1 ranks H = 4 candidates by their first action alone: changing the
    unexecuted tail never changes the pick."""
    cfg = ChunkCriticConfig(variant="dqc", h=2, h_a=1)
    part = cm.TabularQ(2, 1)
    with torch.no_grad():
        part.table[:, 2] = torch.tensor([0.2, 0.7])  # at s = 2: L -> 0.2, R -> 0.7
    critics = DQCCritics(cfg, part, cm.TabularV(), cm.TabularQ(2, 2))
    g = torch.Generator().manual_seed(0)
    tails = torch.randn(6, 3, generator=g)
    first = torch.tensor([-1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    cands = torch.cat([first[:, None], tails], 1)[None, :, :, None]  # (1, N=6, H=4, 1)
    scores = critics.score(cm.state_obs([2]), cands)
    assert scores[0].tolist() == pytest.approx([0.2, 0.2, 0.7, 0.2, 0.7, 0.2])
    _, idx = best_of_n(scores, cands)
    assert idx.item() == 2
