"""bench/bench_critics.py: a (b) rerun of some methods (--methods) replaces those rows only, so a row measured
under other settings keeps them (each row records the run that measured it); bench/critic_diagnostics.py's AUC."""

from __future__ import annotations

from bench.bench_critics import merge_b, n_grid, pick_n


def test_a_method_rerun_replaces_that_row_and_keeps_the_others():
    old = {"stack": {"task": "stack", "settings": {"name": "first"},
                     "methods": {"BC": {"success_rate": 0.25, "run": "first"},
                                 "ALOE-AWR": {"success_rate": 0.15, "run": "first"}}},
           "mw_push": {"task": "mw_push", "methods": {"BC": {"success_rate": 0.4}}}}
    new = {"stack": {"task": "stack", "settings": {"name": "rerun"},
                     "methods": {"ALOE-AWR": {"success_rate": 0.3, "run": "rerun"}}}}
    out = merge_b(old, new)
    assert out["stack"]["methods"]["BC"] == {"success_rate": 0.25, "run": "first"}
    assert out["stack"]["methods"]["ALOE-AWR"] == {"success_rate": 0.3, "run": "rerun"}
    assert out["mw_push"] == old["mw_push"]
    assert old["stack"]["methods"]["ALOE-AWR"]["success_rate"] == 0.15  # inputs untouched
    assert merge_b({}, new) == new


def test_rank_auc_is_the_pairwise_win_rate_with_ties_half():
    import numpy as np

    from bench.critic_diagnostics import rank_auc

    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 40).astype(float), rng.integers(0, 5, 30).astype(float)
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (40 * 30)
    assert rank_auc(pos, neg) == pairwise
    assert rank_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0


def test_n_by_validation_takes_the_best_and_on_a_tie_the_smaller_n():
    assert pick_n({1: 0.30, 4: 0.36, 8: 0.36, 32: 0.20}) == 4
    assert pick_n({1: 0.40, 4: 0.36, 32: 0.38}) == 1  # a critic that does not help is not used


def test_a_bad_n_grid_is_refused_by_name():
    import argparse

    import pytest

    assert n_grid(argparse.Namespace(n_grid="32,1, 4")) == [1, 4, 32]
    assert n_grid(argparse.Namespace(n_grid="")) == []
    for bad in ("4,x", "0,4"):
        with pytest.raises(SystemExit, match="--n-grid"):
            n_grid(argparse.Namespace(n_grid=bad))
