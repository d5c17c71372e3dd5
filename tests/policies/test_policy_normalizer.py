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
