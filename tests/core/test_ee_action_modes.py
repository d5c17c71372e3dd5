"""Issue 10 item 3: absolute end-effector-target actions beside the delta ones, end to end (core contract, sim,
experts, store, training config, checkpoint task spec, export manifest, runtime)."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import hashlib  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from robotstack.core import ee_action as ee  # noqa: E402
from robotstack.core import keys  # noqa: E402
from robotstack.core.errors import ConfigError, StoreError  # noqa: E402

ABS = ee.EEActionSpec(mode="absolute")


# --- the contract ----------------------------------------------------------------------------------------------
def test_absolute_dict_round_trip_and_old_dicts_read_as_delta():
    for spec in (ABS, ee.EEActionSpec(use_yaw=False, max_step_yaw=0.0, mode="absolute"), ee.EEActionSpec()):
        d = json.loads(json.dumps(spec.to_dict()))
        assert ee.EEActionSpec.from_dict(d) == spec and d["action_mode"] == spec.mode
    d = ABS.to_dict()
    assert d["kind"] == "ee_absolute" and d["names"] == ["x", "y", "z", "yaw", "gripper"]
    old = {k: v for k, v in ee.EEActionSpec().to_dict().items() if k != "action_mode"}  # written before the modes
    assert ee.EEActionSpec.from_dict(old).mode == "delta"
    with pytest.raises(ConfigError, match=r"m.json: ee_action.kind='ee_delta': expected 'ee_absolute'"):
        ee.EEActionSpec.from_dict({**d, "kind": "ee_delta"}, where="m.json: ee_action")
    with pytest.raises(ConfigError, match="names"):  # absolute names under a delta mode
        ee.EEActionSpec.from_dict({**d, "kind": "ee_delta", "action_mode": "delta"})
    with pytest.raises(ConfigError, match=r"action_mode='position': expected one of \['delta', 'absolute'\]"):
        ee.EEActionSpec.from_dict({**d, "action_mode": "position"})
    with pytest.raises(ConfigError, match="EEActionSpec.mode"):
        ee.EEActionSpec(mode="abs")


def test_absolute_step_known_values():
    s = ABS
    lo, hi = s.box
    tcp = np.array([0.5, 0.0, 0.2])
    t = ee.EETarget(tcp.copy(), 0.0, s.gripper_open)
    # a near target is taken as is (encode/decode are inverse), yaw within the per-step rate
    a = ee.encode_absolute(s, [0.51, -0.02, 0.19], 0.1, 1.0)
    n = ee.step_target(s, t, a, tcp)
    np.testing.assert_allclose(n.pos, [0.51, -0.02, 0.19], atol=1e-12)
    assert n.yaw == pytest.approx(0.1) and n.gripper == 0.0
    # the corners of the box: -1 = ws_lo, +1 = ws_hi
    np.testing.assert_allclose(ee.decode_absolute(s, np.array([-1.0, -1, -1, 0, 0]))[0], lo)
    np.testing.assert_allclose(ee.decode_absolute(s, np.array([1.0, 1, 1, 0, 0]))[0], hi)
    # a far target is pulled onto the max-lead sphere around the measured TCP (the delta mode's rule)
    n = ee.step_target(s, t, [1.0, 0.0, ee.encode_absolute(s, tcp, 0, 0)[2], 0.0, -1.0], tcp)
    np.testing.assert_allclose(n.pos, [0.5 + s.max_lead, 0.0, 0.2], atol=1e-12)
    assert n.gripper == s.gripper_open
    # yaw: absolute over +-yaw_limit, at most max_step_yaw from the last yaw target per step
    n = ee.step_target(s, ee.EETarget(tcp, 0.2, 0.0), ee.encode_absolute(s, tcp, -1.6, 1.0), tcp)
    assert n.yaw == pytest.approx(0.2 - s.max_step_yaw)
    # out-of-range values are clipped like in delta mode; wrong shapes refused
    n = ee.step_target(s, t, [0.0, 0.0, -5.0, 0.0, 1.0], np.array([0.5, 0.0, 0.03]))
    assert n.pos[2] == pytest.approx(lo[2])
    with pytest.raises(ValueError, match=r"expected \(5,\)"):
        ee.step_target(s, t, [0, 0, 0, 1], tcp)


def test_absolute_from_delta_targets_measured_tcp_plus_step():
    tcp, yaw = np.array([0.45, 0.1, 0.15]), 0.3
    a = ee.absolute_from_delta(ABS, [0.5, -1.0, 0.0, 1.0, 1.0], tcp, yaw)
    pos, y = ee.decode_absolute(ABS, a)
    np.testing.assert_allclose(pos, tcp + [0.01, -0.02, 0.0], atol=1e-12)
    assert y == pytest.approx(yaw + ABS.max_step_yaw) and a[-1] == 1.0
    # hold: delta zeros, absolute the target itself
    t = ee.EETarget(tcp, yaw, 0.0)
    np.testing.assert_array_equal(ee.hold_action(ee.EEActionSpec(), t), [0, 0, 0, 0, -1])
    np.testing.assert_allclose(ee.decode_absolute(ABS, ee.hold_action(ABS, t))[0], tcp, atol=1e-12)


# --- sim ---------------------------------------------------------------------------------------------------------
# sha256 of (action, obs) over 40 seeded random actions with 1 step of action latency, recorded on commit b65b601
# (before the modes existed). Regenerate only for a deliberate sim change: run _random_rollout_digest(task) there (the hash
# is of this platform's MuJoCo build: x86_64 Linux, the pinned mujoco wheel).
DELTA_GOLDEN = {"push": "ec59aa7e79b08e1e2524e4ddb1c825ee84345d6dc8882128cb57334f4e44c455",
                "push_t": "ba4e62f7323ae8cef4bee5aabd282978e42af9d7ba6bdd20b8bb572a83432026"}


def _random_rollout_digest(task: str, **kwargs) -> str:
    import sim

    env = sim.make(task, randomize={"action_latency_steps": 1}, **kwargs)
    h = hashlib.sha256()
    try:
        obs, _ = env.reset(seed=3)
        rng = np.random.default_rng(0)
        for _ in range(40):
            a = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            obs, *_ = env.step(a)
            h.update(a.tobytes())
            for k in sorted(obs):
                h.update(np.ascontiguousarray(obs[k]).tobytes())
    finally:
        env.close()
    return h.hexdigest()


@pytest.mark.parametrize("task", ["push", "push_t"])
def test_delta_mode_is_bit_identical_to_before_the_modes(task):
    assert _random_rollout_digest(task) == _random_rollout_digest(task, action_mode="delta") == DELTA_GOLDEN[task]


def _expert_successes(task: str, mode: str, seeds) -> tuple[int, float]:
    import sim

    env = sim.make(task, action_mode=mode)
    expert = sim.make_expert(env, noise=0.2, seed=0)
    wins, steps = 0, 0
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            expert.reset()
            while True:
                a = expert.act(obs)
                assert a.shape == env.action_space.shape and np.all(np.abs(a) <= 1.0)
                obs, _, term, trunc, info = env.step(a)
                steps += 1
                if term or trunc:
                    break
            wins += bool(info["is_success"])
    finally:
        env.close()
    return wins, steps / len(seeds)


@pytest.mark.parametrize("task", ["reach", "push", "pick_place"])
def test_the_same_expert_succeeds_in_absolute_mode(task):
    seeds = range(6)
    delta, _ = _expert_successes(task, "delta", seeds)
    absolute, _ = _expert_successes(task, "absolute", seeds)
    assert absolute >= delta >= 5, (task, delta, absolute)


def test_env_absolute_mode_spec_latency_hold_and_metaworld_refusal():
    import sim

    env = sim.make("push", action_mode="absolute", randomize={"action_latency_steps": 2})
    try:
        u = env.unwrapped
        spec = u.task_spec()
        assert spec["action_mode"] == "absolute" and spec["action_names"] == ["x", "y", "z", "yaw", "gripper"]
        assert ee.EEActionSpec.from_dict(spec["ee_action"]) == u.action_spec
        env.reset(seed=0)
        start = u.target_pos.copy()
        far = ee.encode_absolute(u.action_spec, start + [0.2, 0.0, 0.0], 0.0, -1.0)
        env.step(far)  # latency 2: the queued hold actions apply first, the target must not jump to the box centre
        np.testing.assert_allclose(u.target_pos, start, atol=1e-9)
    finally:
        env.close()
    with pytest.raises(ConfigError, match=r"action_mode='velocity': expected one of"):
        sim.make("reach", action_mode="velocity")
    pytest.importorskip("metaworld")
    with pytest.raises(ConfigError, match=r"mw:reach-v3.*action_mode='absolute'.*only 'delta'"):
        sim.make("mw:reach-v3", action_mode="absolute")


# --- store, training config, checkpoint task spec ------------------------------------------------------------------
def _record(path, mode: str, episodes: int = 2):
    import sim
    from robotstack.data.recording import open_or_create_store, record_scripted

    env = sim.make("reach", action_mode=mode)
    store = open_or_create_store(path, zarr_format=3)
    try:
        record_scripted(env, sim.make_expert(env, noise=0.0, seed=0), store, "reach", episodes, seed=0, noise=0.0,
                        show_progress=False)
    finally:
        store.close()
        env.close()


def test_store_records_the_mode_and_training_refuses_a_mismatch(tmp_path):
    from robotstack.data.store import EpisodeStore, stores_action_mode
    from robotstack.train.il import load_data, resolve_config

    _record(tmp_path / "abs.zarr", "absolute")
    _record(tmp_path / "delta.zarr", "delta")
    with EpisodeStore.open(tmp_path / "abs.zarr") as s:
        assert s.action_mode == "absolute"
        a = s.load([keys.ACTION])[keys.ACTION]
    assert np.all(np.abs(a[:, :3]) <= 1.0) and np.ptp(a[:, 0]) > 0  # box-normalised targets, not zeros
    with pytest.raises(StoreError, match=r"abs.zarr: holds 2 episode\(s\) with action_mode 'absolute'; refusing "
                                         r"to append action_mode 'delta'"):
        _record(tmp_path / "abs.zarr", "delta")
    with pytest.raises(StoreError, match="different action modes"):
        stores_action_mode([tmp_path / "abs.zarr", tmp_path / "delta.zarr"])

    cfg = resolve_config("configs/il/reach.yaml", [f"data.paths=[{tmp_path / 'abs.zarr'}]"], None)
    assert cfg.action_mode == "delta"  # the shipped default
    with pytest.raises(ConfigError, match=r"config action_mode='delta' but the store\(s\) .*abs.zarr.* hold "
                                          r"action_mode 'absolute'"):
        load_data(cfg)
    cfg = resolve_config("configs/il/reach.yaml", [f"data.paths=[{tmp_path / 'abs.zarr'}]", "action_mode=absolute"],
                         None)
    assert load_data(cfg).action_dim == 4
    with pytest.raises(ConfigError, match="action_mode"):
        resolve_config("configs/il/reach.yaml", [f"data.paths=[{tmp_path / 'abs.zarr'}]", "action_mode=pos"], None)


def test_absolute_contract_travels_checkpoint_to_manifest_to_runtime(tmp_path):
    """task spec (what train il writes into checkpoints) -> export manifest -> runtime PolicySpec and mapper."""
    from policies.checkpoint import checkpoint_action_mode
    from robotstack.export.tiny import export_tiny
    from robotstack.runtime.action_map import EEActionMapper
    from robotstack.runtime.policy_runner import PolicyRunner
    from robotstack.train.il import task_spec

    spec = task_spec("push", "absolute")
    assert checkpoint_action_mode({"task_spec": spec}) == "absolute"
    assert checkpoint_action_mode({"task_spec": task_spec("push")}) == "delta"
    art = export_tiny(tmp_path / "abs", spec, obs_shapes={keys.EEF_POS: (3,)})
    doc = json.loads((art / "manifest.json").read_text())
    assert doc["ee_action"]["action_mode"] == "absolute" and doc["action"]["names"] == spec["action_names"]
    runner_spec = PolicyRunner(art).spec
    contract = runner_spec.action_scale()
    assert contract == ee.EEActionSpec.from_dict(spec["ee_action"]) and contract.mode == "absolute"
    assert runner_spec.use_yaw
    # the runtime maps an absolute action to an IK target through the one core function
    mapper = EEActionMapper(contract)
    from robotstack.core import kinematics as kin

    mapper.reset(kin.HOME_Q.copy())
    tcp = mapper.target_pos.copy()
    mapper.step(ee.encode_absolute(contract, tcp + [0.01, 0.0, 0.0], mapper.target_yaw, 1.0), tcp)
    np.testing.assert_allclose(mapper.target_pos, tcp + [0.01, 0.0, 0.0], atol=1e-12)
    assert mapper.gripper == 0.0


def test_merge_carries_the_mode_and_refuses_mixed_sources(tmp_path):
    from robotstack.data.merge import merge_stores

    _record(tmp_path / "a.zarr", "absolute", episodes=1)
    _record(tmp_path / "b.zarr", "absolute", episodes=1)
    _record(tmp_path / "d.zarr", "delta", episodes=1)
    out = merge_stores([tmp_path / "a.zarr", tmp_path / "b.zarr"], tmp_path / "ab.zarr")
    assert out.action_mode == "absolute" and out.n_episodes == 2
    out.close()
    with pytest.raises(StoreError, match="different action modes"):
        merge_stores([tmp_path / "a.zarr", tmp_path / "d.zarr"], tmp_path / "ad.zarr")


def test_runtime_turns_device_deltas_into_the_contracts_mode():
    """A person taking over drives with delta units; in absolute mode the mapper targets measured TCP + step."""
    from robotstack.core import kinematics as kin
    from robotstack.runtime.action_map import EEActionMapper

    q = kin.HOME_Q.copy()
    tcp = kin.forward_kinematics(q)[2]
    cmd = np.array([1.0, 0.0, -0.5, 0.0, 1.0])
    np.testing.assert_array_equal(EEActionMapper(ee.EEActionSpec()).device_action(cmd, tcp, q), cmd)
    a = EEActionMapper(ABS).device_action(cmd, tcp, q)
    np.testing.assert_allclose(ee.decode_absolute(ABS, a)[0], tcp + [0.02, 0.0, -0.01], atol=1e-12)
