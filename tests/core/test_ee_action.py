"""robotstack.core.ee_action: the one end-effector action contract, and the sim env / runtime both step with it."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import dataclasses  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from robotstack.core import ee_action as ee  # noqa: E402
from robotstack.core import keys  # noqa: E402
from robotstack.core.errors import ConfigError  # noqa: E402


def test_dict_round_trip_through_json():
    for spec in (ee.EEActionSpec(), ee.EEActionSpec(0.01, 0.0, False, ws_lo=[0.1, -0.2, 0.0], max_lead=0.05)):
        d = json.loads(json.dumps(spec.to_dict()))
        assert ee.EEActionSpec.from_dict(d) == spec
        assert d["names"] == list(spec.names) and d["gripper_convention"] == "positive_closes"


def test_defaults_are_the_documented_contract():
    s = ee.EEActionSpec()
    assert s.names == ("dx", "dy", "dz", "dyaw", "gripper") and s.dim == 5
    assert ee.EEActionSpec(use_yaw=False).names == ("dx", "dy", "dz", "gripper")
    assert (s.max_step_pos, s.max_step_yaw, s.max_lead, s.yaw_limit) == (0.02, 0.15, 0.04, 1.6)
    assert s.ws_lo == (0.25, -0.4, 0.012) and s.ws_hi == (0.8, 0.4, 0.45)
    assert s.gripper_open == pytest.approx(0.08)  # total of both Panda fingers (0.04 each)
    assert ee.per_finger_opening(s.gripper_open) == pytest.approx(0.04)


def test_from_dict_refuses_unknown_missing_and_bad_values():
    d = ee.EEActionSpec().to_dict()
    with pytest.raises(ConfigError, match=r"manifest.json:action.*unknown key\(s\) \['extra'\]"):
        ee.EEActionSpec.from_dict({**d, "extra": 1}, where="manifest.json:action")
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['max_lead_m'\]"):
        ee.EEActionSpec.from_dict({k: v for k, v in d.items() if k != "max_lead_m"})
    with pytest.raises(ConfigError, match="names"):
        ee.EEActionSpec.from_dict({**d, "names": ["dx", "dy", "gripper"]})
    with pytest.raises(ConfigError, match="gripper_convention"):
        ee.EEActionSpec.from_dict({**d, "gripper_convention": "positive_opens"})
    with pytest.raises(ConfigError, match="kind"):
        ee.EEActionSpec.from_dict({**d, "kind": "joint"})
    with pytest.raises(ConfigError, match=r"ee_action: EEActionSpec.max_step_pos=-0.1"):
        ee.EEActionSpec.from_dict({**d, "max_step_pos_m": -0.1})
    with pytest.raises(ConfigError, match="ws_lo"):
        ee.EEActionSpec(ws_lo=(0.9, -0.4, 0.0))  # above ws_hi in x
    with pytest.raises(ConfigError, match="ws_hi"):
        ee.EEActionSpec(ws_hi=(0.8, 0.4))
    with pytest.raises(ConfigError, match="max_step_yaw"):
        ee.EEActionSpec(max_step_yaw=0.0, use_yaw=True)
    with pytest.raises(ConfigError, match="expected a mapping"):
        ee.EEActionSpec.from_dict([1, 2])


def test_step_rules_known_values():
    s = ee.EEActionSpec()
    t = ee.EETarget(np.array([0.5, 0.0, 0.2]), 0.0, s.gripper_open)
    tcp = t.pos.copy()
    n = ee.step_target(s, t, [1.0, -0.5, 0.0, 1.0, 1.0], tcp)
    np.testing.assert_allclose(n.pos, [0.52, -0.01, 0.2])
    assert n.yaw == pytest.approx(0.15) and n.gripper == 0.0  # > 0 closes
    assert ee.step_target(s, t, [0, 0, 0, 0, 0.0], tcp).gripper == s.gripper_open  # <= 0 opens
    n = ee.step_target(s, t, [5.0, 0, 0, 0, -1], tcp)  # out-of-range actions are clipped to [-1, 1]
    np.testing.assert_allclose(n.pos, [0.52, 0.0, 0.2])
    # blocked hand: the target leads the measured TCP by at most max_lead
    n = ee.step_target(s, ee.EETarget(np.array([0.55, 0.0, 0.2]), 0.0, 0.0), [1, 0, 0, 0, 1], tcp)
    np.testing.assert_allclose(n.pos, [0.5 + s.max_lead, 0.0, 0.2])
    # workspace box and yaw limit
    n = ee.step_target(s, ee.EETarget(np.array([0.8, 0.4, 0.012]), 1.55, 0.0), [1, 1, -1, 1, 1],
                       [0.8, 0.4, 0.012])
    np.testing.assert_allclose(n.pos, [0.8, 0.4, 0.012])
    assert n.yaw == s.yaw_limit
    # no yaw dim: yaw stays, the last entry is the gripper
    s4 = ee.EEActionSpec(use_yaw=False)
    n = ee.step_target(s4, ee.EETarget(tcp, 0.3, 0.0), [0, 0, 0, -1], tcp)
    assert n.yaw == 0.3 and n.gripper == s4.gripper_open
    with pytest.raises(ValueError, match=r"expected \(4,\)"):
        ee.step_target(s4, t, [0, 0, 0, 0, 1], tcp)


def test_initial_target_clips_into_the_contract():
    s = ee.EEActionSpec()
    t = ee.initial_target(s, [1.0, 0.0, 0.0], 2.5)
    np.testing.assert_allclose(t.pos, [0.8, 0.0, 0.012])
    assert t.yaw == 1.6 and t.gripper == s.gripper_open
    assert ee.initial_target(s, [0.5, 0, 0.2], 0.0, gripper=0.03).gripper == 0.03


def test_runtime_action_scale_is_the_core_spec():
    from robotstack.runtime.action_map import ActionScale

    assert ActionScale is ee.EEActionSpec
    s = ActionScale(0.01, 0.1, False)  # the runtime's positional order still holds
    assert (s.max_step_pos, s.max_step_yaw, s.use_yaw) == (0.01, 0.1, False)
    assert dataclasses.replace(s, max_lead=0.05).max_lead == 0.05


@pytest.mark.parametrize("mode", ["delta", "absolute"])
@pytest.mark.parametrize("task", ["push", "push_t"])
def test_sim_env_and_runtime_mapper_step_exactly_like_the_core(task, mode):
    """Drive a real env with random actions; before each step predict its next target with the core function
    (and with the runtime's EEActionMapper fed the same measured TCP): all three must agree bit for bit. In
    absolute mode random actions are far targets, so the max-lead pull and the yaw rate limit act every step."""
    import sim
    from robotstack.runtime.action_map import EEActionMapper

    env = sim.make(task, action_mode=mode)
    u = env.unwrapped
    spec = u.action_spec
    assert spec.names == u.action_names
    assert spec.to_dict()["max_step_yaw_rad"] == u.task_spec()["max_step_yaw_rad"]
    try:
        obs, _ = env.reset(seed=1)
        mapper = EEActionMapper(spec)
        mapper.reset(obs[keys.JOINT_POS].astype(np.float64), obs[keys.GRIPPER][0])
        np.testing.assert_allclose(mapper.target_pos, u.target_pos, atol=1e-6)  # float32 joint obs
        mapper.target_pos, mapper.target_yaw = u.target_pos.copy(), u.target_yaw
        rng = np.random.default_rng(0)
        closed = 0
        for i in range(60):
            # float32 as a policy emits them; some out of range: the env and the core clip alike
            a = rng.uniform(-1.2, 1.2, spec.dim).astype(np.float32)
            if i >= 50:
                a[-1] = -1.0  # end open to check the gripper unit below
            tcp = u.tcp_pos
            want = ee.step_target(spec, ee.EETarget(u.target_pos.copy(), u.target_yaw, u.gripper_cmd), a, tcp)
            _, grip = mapper.step(a, tcp)
            obs, *_ = env.step(a)
            np.testing.assert_array_equal(u.target_pos, want.pos)
            assert u.target_yaw == want.yaw and u.gripper_cmd == want.gripper == grip
            np.testing.assert_array_equal(mapper.target_pos, want.pos)
            assert mapper.target_yaw == want.yaw
            # the sim's finger actuators get the one per-finger conversion of the contract's opening
            np.testing.assert_array_equal(u.data.ctrl[u.h.finger_act], ee.per_finger_opening(want.gripper))
            closed += want.gripper == 0.0
        assert 0 < closed < 60
        # one gripper unit: the observation reports the total opening, the same number the contract commands
        assert obs[keys.GRIPPER][0] == pytest.approx(spec.gripper_open, abs=2e-3)
    finally:
        env.close()


def test_checkpoints_carry_the_whole_contract():
    """train il writes the env's full spec into checkpoints (and so into export manifests); it reads back strictly."""
    import sim
    from robotstack.train.il import task_spec

    env = sim.make("push_t")
    try:
        stored = task_spec("push_t")["ee_action"]
        assert ee.EEActionSpec.from_dict(stored, where="task_spec.ee_action") == env.unwrapped.action_spec
    finally:
        env.close()
