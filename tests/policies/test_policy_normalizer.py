import numpy as np
import pytest
import torch
from policy_testing import random_obs

from policies.common.normalizer import MissingStatsError, Normalizer
from policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig


def _norm():
    return Normalizer({"a": (3,), "b": (2,), "c": (2,)}, {"a": "minmax", "b": "meanstd", "c": "identity"})


def test_round_trip_and_ranges():
    rng = np.random.default_rng(0)
    data = {"a": rng.uniform(-5, 7, (500, 3)), "b": rng.normal(3, 2, (500, 2)), "c": rng.normal(size=(10, 2))}
    data["a"][:, 2] = 4.0  # constant dim
    n = _norm()
    n.fit(data)
    for k, arr in data.items():
        x = torch.tensor(arr, dtype=torch.float32)
        torch.testing.assert_close(n.unnormalize(k, n.normalize(k, x)), x, rtol=1e-5, atol=1e-4)
    a = n.normalize("a", torch.tensor(data["a"], dtype=torch.float32))
    assert a[:, :2].min() >= -1 - 1e-6 and a[:, :2].max() <= 1 + 1e-6
    assert torch.allclose(a[:, 2], torch.zeros(500))  # constant dim maps to 0, not inf
    b = n.normalize("b", torch.tensor(data["b"], dtype=torch.float32))
    assert torch.allclose(b.mean(0), torch.zeros(2), atol=1e-4) and torch.allclose(b.std(0), torch.ones(2), atol=1e-2)
    # leading (B, To) dims broadcast
    assert n.normalize("a", torch.zeros(4, 2, 3)).shape == (4, 2, 3)


def test_missing_stats_fail_loudly():
    n = _norm()
    n.fit({"a": np.zeros((4, 3))})
    with pytest.raises(MissingStatsError, match="'b'"):
        n.normalize("b", torch.zeros(2))
    with pytest.raises(KeyError, match="no key 'zz'"):
        n.normalize("zz", torch.zeros(2))
    with pytest.raises(ValueError, match=r"expects data shaped \(N, \*\(3,\)\)"):
        n.fit_key("a", np.zeros((4, 2)))


def test_stats_live_in_state_dict():
    n = _norm()
    n.fit({"a": np.arange(12.0).reshape(4, 3), "b": np.ones((4, 2)), "c": np.ones((4, 2))})
    fresh = _norm()
    with pytest.raises(MissingStatsError):
        fresh.normalize("a", torch.zeros(3))
    fresh.load_state_dict(n.state_dict())
    torch.testing.assert_close(fresh.normalize("a", torch.ones(3)), n.normalize("a", torch.ones(3)))
    assert "stats.a.scale" in n.state_dict() and "stats.a.fitted" in n.state_dict()


def test_policy_without_stats_refuses_to_act():
    policy = DiffusionPolicy(DiffusionPolicyConfig.example())
    with pytest.raises(MissingStatsError, match="fit_normalizer"):
        policy.predict_action(random_obs(policy.config, 1))
    with pytest.raises(KeyError, match="no data for keys"):
        policy.fit_normalizer({"action": np.zeros((3, 4))})


@pytest.mark.parametrize("kind", ["diffusion", "mlp_bc"])
def test_obs_std_floor_keeps_near_constant_dims_at_physical_size(kind):
    """push's cube height varies by ~0.7 mm in the demos: with the old fixed 1e-6 floor, a 5 mm lift in a rollout
    read as ~7 sigma; with obs_std_floor 0.01 it stays under one unit. Dims with a real spread are unaffected."""
    import dataclasses

    from policies.bc.config import MLPBCConfig
    from policies.bc.model import MLPBCPolicy

    base = dataclasses.replace(DiffusionPolicyConfig.example(), obs_norm="meanstd", obs_std_floor=0.01)
    policy = DiffusionPolicy(base) if kind == "diffusion" else MLPBCPolicy(MLPBCConfig(base=base))
    rng = np.random.default_rng(0)
    cube = np.concatenate([rng.normal(0.5, 0.05, (500, 2)), rng.normal(0.02, 7e-4, (500, 1)),
                           rng.normal(0.0, 0.01, (500, 4))], axis=1)
    policy.fit_normalizer({"robot_eef_pos": rng.normal(0.4, 0.1, (500, 3)), "object_state": cube,
                           "action": rng.uniform(-1, 1, (500, 4))})
    lifted = torch.tensor([0.5, 0.0, 0.025, 0.0, 0.0, 0.0, 0.0], dtype=torch.float32)
    z = policy.normalizer.normalize("object_state", lifted)
    assert abs(float(z[2])) < 1.0  # 5 mm above the mean height: < 1 unit (was ~7 at a 1e-6 floor)
    spread = policy.normalizer.normalize("object_state", torch.tensor(cube[:, :2].mean(0).tolist() + [0.02] * 5,
                                                                      dtype=torch.float32) + 0.05)
    assert float(spread[0]) == pytest.approx(1.0, abs=0.15)  # x: std 0.05, not floored
    with pytest.raises(Exception, match="obs_std_floor"):
        dataclasses.replace(base, obs_std_floor=0.0)
