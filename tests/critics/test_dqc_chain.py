"""DQC / QC / NS / OS on the 5-state chain (dqc_aloe.md §5 tests 1-5), trained with the real losses of
policies.critics on exact tabular critics (and one small MLP), against the exact solutions of chain_mdp.py."""

import numpy as np
import pytest
import torch

import chain_mdp as cm
from policies.critics import (ChunkCritic, ChunkCriticConfig, DQCCritics, backup_target, chunk_target,
                              critic_td_loss, ensemble_scores, regression_loss)

ALL_CHUNKS = cm.chunk_tensor(cm.CHUNKS)  # (4, 2, 1)
# (3, RL) is never in the data: the chunk terminates after R and the sampler pads with the executed R, so a
# critic is never asked about it (a table cannot generalise "actions after a terminal do not count")
SEEN = np.ones((4, 4), bool)
SEEN[3, 2] = False


def train_chunk_td(critic, steps, lr):
    """Spec test 1: QC-style chunk TD with an exact max over the 4 next chunks (best-of-N with every chunk),
    scored by the online ensemble's min."""
    b = cm.chain_batch(2)
    cands = ALL_CHUNKS[None].expand(16, 4, 2, 1)

    def loss():
        with torch.no_grad():
            next_v = torch.sigmoid(ensemble_scores(critic, b["next_obs"], cands, "min")).max(1).values
            y = chunk_target(b["reward_sum"], b["h_eff"], b["done"], next_v, cm.GAMMA, "sigmoid")
        return critic_td_loss(critic(b["obs"], b["actions"]), y, "sigmoid", b["complete"])

    cm.fit(critic.parameters(), loss, steps, lr)
    obs = cm.state_obs(np.repeat(np.arange(4), 4))
    return torch.sigmoid(critic(obs, ALL_CHUNKS.repeat(4, 1, 1))).detach().numpy().reshape(-1, 4, 4)


def test_chunk_td_learns_the_true_chunk_value_tabular():
    q = train_chunk_td(cm.TabularQ(num_qs=2, chunk_len=2), 600, 0.1)
    _, _, q2 = cm.optimal()
    for member in q:
        assert member[SEEN] == pytest.approx(q2[SEEN], abs=5e-3)
    assert q[:, 3, 3] == pytest.approx([1.0, 1.0], abs=5e-3)  # termination inside the chunk


def test_chunk_td_learns_the_true_chunk_value_mlp():
    torch.manual_seed(0)
    q = train_chunk_td(ChunkCritic(cm.N_STATES, 1, 2, num_qs=2, hidden=(64, 64), layer_norm=True), 600, 1e-2)
    _, _, q2 = cm.optimal()
    assert q.mean(0)[SEEN] == pytest.approx(q2[SEEN], abs=2e-2)


def make_critics(variant, kappa_d=0.5, h=2, h_a=1):
    cfg = ChunkCriticConfig(variant=variant, h=h, h_a=h_a, gamma=cm.GAMMA, kappa_d=kappa_d, kappa_b=0.9,
                            tau=0.2)
    chunk = cm.TabularQ(2, h) if cfg.use_chunk_critic else None
    return DQCCritics(cfg, cm.TabularQ(2, h_a), cm.TabularV(), chunk)


def train_dqc(critics, steps=800, lr=0.1):
    b = cm.chain_batch(critics.cfg.h)

    def loss():
        return critics.losses(b["obs"], b["actions"], b["reward_sum"], b["h_eff"], b["done"], b["next_obs"],
                              b["complete"])["total"]

    cm.fit(critics.parameters(), loss, steps, lr, critics.update_target)
    obs = cm.state_obs(range(4))
    v = torch.sigmoid(critics.value(obs)).detach().numpy()
    qp = np.stack([torch.sigmoid(critics.partial_critic(obs, torch.full((4, 1, 1), a))).detach().numpy()
                   for a in cm.ACTIONS], -1)  # (K, 4 states, 2 actions)
    return v, qp


def test_ns2_converges_to_the_biased_fixed_point():
    v, qp = train_dqc(make_critics("ns"))
    ref = cm.ns2_fixed_point()
    for member in qp:
        assert member == pytest.approx(ref, abs=5e-3)
    assert qp[:, 2, 1] == pytest.approx([0.7563] * 2, abs=5e-3) and qp[:, 0, 1].max() < 0.729 - 0.1


@pytest.mark.parametrize("kappa_d", [0.5, 0.8])
def test_dqc_converges_to_its_fixed_point(kappa_d):
    v, qp = train_dqc(make_critics("dqc", kappa_d))
    v_ref, qp_ref, _ = cm.dqc_fixed_point(kappa_d)
    assert v == pytest.approx(v_ref[:4], abs=5e-3)
    for member in qp:
        assert member == pytest.approx(qp_ref, abs=5e-3)


def test_one_step_converges_to_q_star():
    v, qp = train_dqc(make_critics("os", h=1, h_a=1))
    v_star, q_star, _ = cm.optimal()
    assert v == pytest.approx(v_star[:4], abs=5e-3)
    assert qp.mean(0) == pytest.approx(q_star, abs=5e-3)


def test_qc_is_the_chunk_value_of_the_h_step_backup():
    critics = make_critics("qc", h=2, h_a=2)
    b = cm.chain_batch(2)
    cm.fit(critics.parameters(), lambda: critics.losses(b["obs"], b["actions"], b["reward_sum"], b["h_eff"],
                                                        b["done"], b["next_obs"], b["complete"])["total"],
           800, 0.1, critics.update_target)
    _, _, q2 = cm.optimal()
    obs = cm.state_obs(np.repeat(np.arange(4), 4))
    q = torch.sigmoid(critics.partial_critic(obs, ALL_CHUNKS.repeat(4, 1, 1))).detach().numpy().reshape(2, 4, 4)
    # V = 0.9-quantile over 4 equally likely chunks = the max: QC's fixed point is Q*_2
    assert q.mean(0)[SEEN] == pytest.approx(q2[SEEN], abs=5e-3)


@pytest.mark.parametrize("kappa_d", [0.5, 0.8, 0.9, 0.99])
def test_distillation_is_the_member_wise_expectile_over_completions(kappa_d):
    """Spec test 3: given exact chunk critics (member 0 = Q*_2, member 1 = Q*_2 / 2), the partial critic's member i
    fits the kappa_d-expectile of member i over the two completions (not of an aggregate)."""
    _, _, q2 = cm.optimal()
    members = np.stack([q2, q2 / 2])
    chunk = cm.TabularQ(2, 2)
    with torch.no_grad():
        chunk.table[:, :4] = torch.logit(torch.as_tensor(members, dtype=torch.float32))
    part = cm.TabularQ(2, 1)
    b = cm.chain_batch(2)
    obs = cm.state_obs(np.repeat(np.arange(4), 4))
    acts = ALL_CHUNKS.repeat(4, 1, 1)
    y = torch.sigmoid(chunk(obs, acts)).detach()
    cm.fit(part.parameters(), lambda: regression_loss(part(obs, acts), y, "sigmoid", "expectile", kappa_d),
           600, 0.1)
    assert b["obs"].shape[0] == 16
    got = torch.sigmoid(part(cm.state_obs([2, 2]), cm.chunk_tensor([(1.0,), (-1.0,)]))).detach().numpy()
    for i, m in enumerate(members):
        assert got[i, 0] == pytest.approx(cm.expectile(m[2, 2:4], kappa_d), abs=2e-3)
        assert got[i, 1] == pytest.approx(cm.expectile(m[2, 0:2], kappa_d), abs=2e-3)
        assert m[2, 2:4].mean() - 1e-3 <= got[i, 0] <= m[2, 2:4].max() + 1e-3
    if kappa_d == 0.5:
        assert got[0, 0] == pytest.approx(0.8145, abs=2e-3)


@pytest.mark.parametrize("kappa_b", [0.2, 0.5, 0.9])
@pytest.mark.parametrize("output", ["sigmoid", "linear"])
def test_value_fit_is_the_quantile_over_dataset_actions(kappa_b, output):
    """Spec test 5: three equally likely actions with fixed Q^P; pinball regression returns the kappa_b-quantile."""
    q = torch.tensor([0.3, 0.55, 0.8])
    target = q if output == "linear" else q
    v = torch.zeros(1, requires_grad=True)
    cm.fit([v], lambda: regression_loss(v.expand(1, 3), target, output, "quantile", kappa_b), 600, 0.05)
    got = torch.sigmoid(v) if output == "sigmoid" else v
    assert got.item() == pytest.approx(cm.quantile(q.numpy(), kappa_b), abs=2e-3)


@pytest.mark.parametrize("output, kind", [("linear", "expectile"), ("linear", "quantile"),
                                          ("sigmoid", "expectile"), ("sigmoid", "quantile")])
def test_sample_weights_act_like_duplicated_samples(output, kind):
    """Weight 2 on a sample = that sample twice; weight 0 = dropped (the `complete` / intervention masks)."""
    pred = torch.tensor([[0.1, -0.4, 0.3], [0.2, 0.0, -0.1]])
    target = torch.tensor([0.6, 0.2, 0.45])
    weighted = regression_loss(pred, target, output, kind, 0.8, torch.tensor([2.0, 1.0, 0.0]))
    dup = regression_loss(pred[:, [0, 0, 1]], target[[0, 0, 1]], output, kind, 0.8)
    assert weighted.item() == pytest.approx(dup.item(), rel=1e-6)


def test_backup_target_aggregates():
    z = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    p, logit = backup_target(z, "min", "sigmoid")
    assert torch.allclose(logit, torch.tensor([0.0, -1.0])) and torch.allclose(p, torch.sigmoid(logit))
    p, logit = backup_target(z, "mean", "sigmoid")
    assert torch.allclose(p, torch.sigmoid(z).mean(0)) and torch.allclose(torch.sigmoid(logit), p, atol=1e-6)
    p, _ = backup_target(z, "mean", "linear")
    assert torch.allclose(p, torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("variant, h, h_a", [("dqc", 2, 2), ("qc", 4, 2), ("ns", 1, 1), ("ns", 3, 2),
                                              ("os", 2, 1), ("bogus", 2, 1)])
def test_config_rejects_inconsistent_variants(variant, h, h_a):
    with pytest.raises(ValueError, match="variant"):
        ChunkCriticConfig(variant=variant, h=h, h_a=h_a)


def test_config_variants_share_the_code():
    for variant, h, h_a in [("dqc", 25, 5), ("qc", 5, 5), ("ns", 25, 1), ("os", 1, 1)]:
        cfg = ChunkCriticConfig(variant=variant, h=h, h_a=h_a)
        critics = DQCCritics.build(cfg, obs_dim=3, action_dim=2)
        assert (critics.chunk_critic is not None) == (variant == "dqc")
        out = critics.losses(torch.zeros(4, 3), torch.zeros(4, h, 2), torch.zeros(4), torch.full((4,), h),
                             torch.zeros(4, dtype=torch.bool), torch.zeros(4, 3))
        assert set(out) == ({"chunk"} if variant == "dqc" else set()) | {"partial", "value", "total"}
        assert torch.isfinite(out["total"])
