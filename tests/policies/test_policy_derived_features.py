"""Derived observation features (policies/encoders/derived.py): what object_goal_frame means, its symmetries,
and that a policy with it fits, acts and refuses a bad config by name."""

import dataclasses

import numpy as np
import pytest
import torch
from policy_testing import random_obs

from policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
from policies.encoders import derived
from robotstack.core.errors import ConfigError
from robotstack.core.rotations import quat_yaw, yaw_to_quat

HAND_DOWN = np.array([0.0, 1.0, 0.0, 0.0])  # wxyz, the hand pointing down at yaw 0


def hand_quat(yaw: float) -> np.ndarray:
    """The down-pointing hand turned by yaw about world z (q_yaw * q_down)."""
    c, s = np.cos(yaw / 2), np.sin(yaw / 2)
    w, x, y, z = HAND_DOWN
    return np.array([c * w - s * z, c * x - s * y, c * y + s * x, c * z + s * w])


def scene(tcp, cube_xy, cube_yaw, goal_xy, hand_yaw):
    obj = np.concatenate([[cube_xy[0], cube_xy[1], 0.025], yaw_to_quat(cube_yaw)])
    return {"robot_eef_pos": np.asarray(tcp, float), "robot_eef_quat": hand_quat(hand_yaw), "object_state": obj,
            "goal": np.array([goal_xy[0], goal_xy[1], 0.025])}


def frame(obs) -> np.ndarray:
    t = {k: torch.tensor(v, dtype=torch.float64)[None] for k, v in obs.items()}
    return derived.compute(["object_goal_frame"], t, list(t))["feature_object_goal_frame"][0].double().numpy()


def test_object_goal_frame_reads_the_push_geometry():
    # goal 0.2 m along +y from the cube; the TCP 5 cm behind the cube on that line and 1 cm to its right
    obs = scene([0.51, -0.05, 0.04], [0.5, 0.0], 0.3, [0.5, 0.2], hand_yaw=np.pi / 2 + 0.1)
    assert abs(quat_yaw(obs["robot_eef_quat"]) - (np.pi / 2 + 0.1)) < 1e-9  # the helper builds what we think
    f = frame(obs)
    along, lateral, height, dist, dx, dy, oc, os_, hc, hs = f
    np.testing.assert_allclose([along, lateral, height, dist, dx, dy], [-0.05, -0.01, 0.015, 0.2, 0.0, 1.0],
                               atol=1e-6)
    a, b = 0.3 - np.pi / 2, 0.1  # cube and hand yaw relative to the push heading (+y)
    np.testing.assert_allclose([oc, os_, hc, hs], [np.cos(4 * a), np.sin(4 * a), np.cos(2 * b), np.sin(2 * b)],
                               atol=1e-6)


def test_object_goal_frame_symmetries():
    rng = np.random.default_rng(0)
    for _ in range(20):
        tcp, cube, goal = rng.uniform(-0.3, 0.3, 3), rng.uniform(-0.3, 0.3, 2), rng.uniform(-0.3, 0.3, 2)
        cy, hy = rng.uniform(-np.pi, np.pi, 2)
        f = frame(scene(tcp, cube, cy, goal, hy))
        # a cube turned by 90 deg and a finger pair turned by 180 deg look the same
        np.testing.assert_allclose(frame(scene(tcp, cube, cy + np.pi / 2, goal, hy + np.pi)), f, atol=1e-6)
        # the whole scene turned about world z: only the frame's world heading (dir_x, dir_y) changes
        r = rng.uniform(-np.pi, np.pi)
        rot = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
        g = frame(scene([*(rot @ tcp[:2]), tcp[2]], rot @ cube, cy + r, rot @ goal, hy + r))
        np.testing.assert_allclose(np.delete(g, [4, 5]), np.delete(f, [4, 5]), atol=1e-6)
        np.testing.assert_allclose(g[4:6], rot @ f[4:6], atol=1e-6)


def _config(**kw):
    shapes = {"robot_eef_pos": (3,), "robot_eef_quat": (4,), "object_state": (7,), "goal": (3,)}
    return dataclasses.replace(DiffusionPolicyConfig.example(), obs_shapes=shapes, **kw)


def test_policy_with_features_fits_from_raw_arrays_and_reads_the_feature():
    policy = DiffusionPolicy(_config(obs_features=["object_goal_frame"], obs_norm="meanstd", obs_std_floor=0.01))
    rng = np.random.default_rng(0)
    n = 256
    raw = {"robot_eef_pos": rng.normal(0.4, 0.1, (n, 3)), "robot_eef_quat": np.tile(HAND_DOWN, (n, 1)),
           "object_state": np.concatenate([rng.normal(0.5, 0.05, (n, 3)), np.tile([1.0, 0, 0, 0], (n, 1))], 1),
           "goal": rng.normal(0.5, 0.1, (n, 3)), "action": rng.uniform(-1, 1, (n, 4))}
    policy.fit_normalizer(raw)  # the raw keys only: the feature's stats are computed from them
    assert policy.normalizer.is_fitted("feature_object_goal_frame")
    obs = random_obs(policy.config, 2)
    assert "feature_object_goal_frame" not in obs  # not an observation: computed inside the policy
    state = policy.encode_obs(obs).state  # (B, To, Ds): what the state encoder read, normalized
    feature = derived.compute(["object_goal_frame"], obs, policy.config.low_dim_keys)["feature_object_goal_frame"]
    assert state.shape == (2, 2, 3 + 4 + 7 + 3 + 10)
    torch.testing.assert_close(state[..., -10:], policy.normalizer.normalize("feature_object_goal_frame", feature))
    action = policy.predict_action(obs, steps=2).action
    assert torch.isfinite(action).all()


def test_bad_feature_configs_name_the_problem():
    with pytest.raises(ConfigError, match="unknown feature 'nope'"):
        _config(obs_features=["nope"])
    shapes = {"robot_eef_pos": (3,), "object_state": (7,)}
    with pytest.raises(ConfigError, match=r"reads the obs keys \['goal'\]"):
        dataclasses.replace(DiffusionPolicyConfig.example(), obs_shapes=shapes, obs_features=["object_goal_frame"])


def test_without_the_hand_quaternion_the_frame_has_8_dims():
    """Meta-World observes no hand orientation: the feature then drops its hand-yaw pair (and still fits)."""
    shapes = {"robot_eef_pos": (3,), "object_state": (7,), "goal": (3,)}
    cfg = dataclasses.replace(DiffusionPolicyConfig.example(), obs_shapes=shapes, obs_features=["object_goal_frame"])
    assert cfg.state_shapes["feature_object_goal_frame"] == (8,)
    obs = scene([0.51, -0.05, 0.04], [0.5, 0.0], 0.3, [0.5, 0.2], hand_yaw=0.0)
    with_hand = frame(obs)
    del obs["robot_eef_quat"]
    np.testing.assert_allclose(frame(obs), with_hand[:8])
    policy = DiffusionPolicy(cfg)
    rng = np.random.default_rng(0)
    policy.fit_normalizer({k: rng.uniform(-1, 1, (64, *s)) for k, s in {**shapes, "action": (4,)}.items()})
    assert policy.encode_obs(random_obs(cfg, 2)).state.shape == (2, 2, 3 + 7 + 3 + 8)
