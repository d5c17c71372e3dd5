"""The exact solvers of chain_mdp.py reproduce every number of dqc_aloe.md §5-6 (so the reference values the
learning tests compare against are computed, and the spec's table is checked, not trusted)."""

import numpy as np
import pytest

import chain_mdp as cm


def test_optimal_values():
    v, q, q2 = cm.optimal()
    assert v == pytest.approx([0.729, 0.81, 0.9, 1.0, 0.0], abs=1e-9)
    assert q == pytest.approx(np.array([[0.6561, 0.729], [0.6561, 0.81], [0.729, 0.9], [0.81, 1.0]]), abs=1e-9)
    assert q2 == pytest.approx(np.array([[0.59049, 0.6561, 0.59049, 0.729], [0.59049, 0.6561, 0.6561, 0.81],
                                         [0.59049, 0.729, 0.729, 0.9], [0.6561, 0.81, 1.0, 1.0]]), abs=1e-9)


def test_ns2_is_biased_below_q_star():
    q = cm.ns2_fixed_point()
    assert q[2, 1] == pytest.approx(0.7563, abs=1e-4) and q[0, 1] == pytest.approx(0.5148, abs=1e-4)
    _, q_star, _ = cm.optimal()
    assert (q <= q_star + 1e-12).all()


@pytest.mark.parametrize("kappa_d, expected", [(0.5, 0.8145), (0.8, 0.8658), (0.9, 0.8829), (0.99, 0.8983)])
def test_optimistic_distillation_of_the_exact_chunk_critic(kappa_d, expected):
    _, _, q2 = cm.optimal()
    e = cm.expectile(q2[2, 2:4], kappa_d)  # Q^P(2, R) over completions RL, RR
    assert e == pytest.approx(expected, abs=1e-4)
    assert e == pytest.approx(0.729 + kappa_d * 0.171, abs=1e-9)  # two equally likely completions


@pytest.mark.parametrize("kappa_d, expected", [(0.5, [0.5148, 0.6807, 0.7563, 1.0]),
                                               (0.8, [0.6644, 0.7733, 0.8592, 1.0]),
                                               (0.99, [0.7262, 0.8084, 0.8983, 1.0])])
def test_dqc_fixed_points(kappa_d, expected):
    v, _, _ = cm.dqc_fixed_point(kappa_d)
    assert v[:4] == pytest.approx(expected, abs=1e-4)


def test_dqc_at_kappa_half_equals_ns2():
    v, qp, _ = cm.dqc_fixed_point(0.5)
    assert qp == pytest.approx(cm.ns2_fixed_point(), abs=1e-9)


def test_uniform_completion_means():
    _, _, q2 = cm.optimal()
    assert q2[2, 0:2].mean() == pytest.approx(0.65974, abs=1e-5)
    assert q2[2, 2:4].mean() == pytest.approx(0.8145, abs=1e-5)
    assert q2[1, 2:4].mean() == pytest.approx(0.73305, abs=1e-5)
    assert q2[0, 2:4].mean() == pytest.approx(0.65974, abs=1e-5)


def test_policy_evaluation_values():
    v, q2, pc = cm.policy_eval(0.7)
    assert v[:4] == pytest.approx([0.51406, 0.59566, 0.72518, 0.8958], abs=1e-5)
    assert q2[2] == pytest.approx([0.41639, 0.5874, 0.5874, 0.9], abs=1e-4)
    assert (q2 @ pc) == pytest.approx(v[:4], abs=1e-12)


def test_awr_closed_form():
    v, q2, _ = cm.policy_eval(0.7)
    w = np.exp((q2[2] - v[2]) / 0.1)
    assert w / w.sum() == pytest.approx([0.0072, 0.0401, 0.0401, 0.9126], abs=1e-4)


def test_quantile_and_expectile_helpers():
    x = [0.1, 0.5, 0.9]
    assert [cm.quantile(x, t) for t in (0.2, 0.5, 0.9)] == [0.1, 0.5, 0.9]
    assert cm.expectile(x, 0.5) == pytest.approx(0.5)
    assert cm.expectile([0, 1], 0.8) == pytest.approx(0.8)
