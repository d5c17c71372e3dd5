"""The transition ensemble (policies/rl/transition.py, rl100.md §4.3) on a known linear dynamics."""

import torch

import rl_testing  # noqa: F401  (one torch thread)
from policies.rl.transition import EnsembleConfig, TransitionEnsemble, fit_ensemble


def linear_data(n=2000, d=4, a=2, noise=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.eye(d) + 0.1 * torch.randn(d, d, generator=g)
    B = torch.randn(a, d, generator=g)
    s = torch.randn(n, d, generator=g)
    u = torch.rand(n, a, generator=g) * 2 - 1
    s2 = s @ A.T + u @ B + noise * torch.randn(n, d, generator=g)
    return s, u, s2, (A, B)


def test_fits_linear_dynamics_and_elites_are_the_lowest_holdout_loss(tmp_path):
    s, u, s2, (A, B) = linear_data(n=1200)
    cfg = EnsembleConfig(hidden=[64, 64], weight_decay=[1e-5, 1e-5, 1e-5], max_epochs=40, patience=8,
                         batch_size=128, lr=3e-3)
    model, report = fit_ensemble(s, u, s2, cfg, torch.Generator().manual_seed(1))
    # elites: the 5 members with the lowest holdout MSE, best first
    order = sorted(range(cfg.members), key=lambda i: report.holdout_mse[i])
    assert report.elites == order[:cfg.elites] and model.elite_idx.tolist() == order[:cfg.elites]
    # fresh states: the elite means predict s' (noise 0.01) far better than "no change" (error ~ 1)
    st, ut, st2, _ = linear_data(n=500, seed=7)
    st2 = st @ A.T + ut @ B
    mean, std = model.predict(st, ut)
    err = (mean[model.elite_idx] - st2).pow(2).mean().sqrt()
    assert err < 0.1, err
    assert (st - st2).pow(2).mean().sqrt() > 0.5  # "no change" is far off
    assert bool((std > 0).all())
    # a sampled next state comes from an elite's Gaussian: close to the truth too
    smp = model.sample(st, ut, torch.Generator().manual_seed(0))
    assert smp.shape == st2.shape and (smp - st2).pow(2).mean().sqrt() < 0.2
    # the dir round-trips
    model.save(tmp_path / "dyn", report)
    back = TransitionEnsemble.load(tmp_path / "dyn")
    assert torch.equal(back.predict(st, ut)[0], model.predict(st, ut)[0])
    assert back.elite_idx.tolist() == report.elites


def test_holdout_early_stopping_stops_before_max_epochs():
    s, u, s2, _ = linear_data(n=400)
    cfg = EnsembleConfig(hidden=[32], weight_decay=[1e-5, 1e-5], max_epochs=500, patience=3, lr=3e-3)
    _, report = fit_ensemble(s, u, s2, cfg, torch.Generator().manual_seed(0))
    assert report.epochs < 500


def test_constant_input_column_and_out_of_range_rollouts_stay_bounded():
    """A column that is constant in the data (a gripper the demos never opened) keeps scale 1, so another value
    of it at rollout time is an ordinary input; sampled features stay inside the training range."""
    s, u, s2, _ = linear_data(n=400)
    u[:, 1] = -1.0  # constant action column
    cfg = EnsembleConfig(hidden=[32], weight_decay=[1e-5, 1e-5], max_epochs=5, lr=3e-3)
    model, _ = fit_ensemble(s, u, s2, cfg, torch.Generator().manual_seed(0))
    assert float(model.in_std[s.shape[1] + 1]) == 1.0
    u_other = u.clone()
    u_other[:, 1] = 1.0
    mean, _ = model.predict(s, u_other)
    assert mean.abs().max() < 100
    far = model.sample(s * 1e3, u_other, torch.Generator().manual_seed(0))
    lo = torch.minimum(s.min(0).values, s2.min(0).values)
    hi = torch.maximum(s.max(0).values, s2.max(0).values)
    assert bool(((far >= lo) & (far <= hi)).all())
