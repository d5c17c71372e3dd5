"""The artifact contract the runtime reads: success criteria as data (written by the sim task, judged from the
published state), and no defaults for what the manifest must carry. Real exporter artifacts (conftest.policies)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from robotstack.core.errors import ArtifactError
from robotstack.core.success import success_fn
from robotstack.runtime.policy_runner import PolicyRunner


@pytest.mark.parametrize("task, steps", [("reach", 60), ("push", 200)])
def test_success_data_agrees_with_the_sim_task(task, steps):
    """The criterion the manifest carries, judged on the observation, equals the sim's is_success every step."""
    import sim

    env = sim.make(task)
    try:
        judge = success_fn(env.unwrapped.task_spec()["success"])
        expert = sim.make_expert(env, noise=0.0, seed=0)
        obs, _ = env.reset(seed=3)
        expert.reset()
        seen = set()
        for _ in range(steps):
            obs, _, _, _, info = env.step(expert.act(obs))
            assert judge(obs) == info["is_success"]
            seen.add(info["is_success"])
        assert seen == {False, True}  # both outcomes were checked
    finally:
        env.close()


def test_tasks_without_a_state_criterion_declare_none():
    import sim

    for task in ("pick_place", "stack", "push_t"):
        env = sim.make(task)
        assert env.unwrapped.task_spec()["success"] is None and success_fn(None) is None
        env.close()


def test_runner_takes_task_and_success_from_the_manifest(policies):
    spec = PolicyRunner(policies["slow_x"]).spec
    assert spec.task == "reach" and spec.dof == 7 and spec.control_hz == 20.0
    judge = success_fn(spec.success)
    assert judge({"robot_eef_pos": [0.5, 0.0, 0.2], "goal": [0.51, 0.0, 0.2]})
    assert not judge({"robot_eef_pos": [0.5, 0.0, 0.2], "goal": [0.53, 0.0, 0.2]})
    assert spec.action_scale().ws_hi == (0.8, 0.4, 0.45)  # the contract came from the manifest, not defaults


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["ee_action"].pop("max_lead_m"), "missing key(s) ['max_lead_m']"),
    (lambda d: d["action"].update(names=["dx", "dy", "dz", "dyaw"]), "do not match ee_action.names"),
    (lambda d: d.pop("control_rate_hz"), "'control_rate_hz'"),
    (lambda d: d["task"].pop("name"), "'task.name'"),
])
def test_runner_refuses_a_manifest_without_what_it_needs(policies, tmp_path, edit, field):
    d = shutil.copytree(policies["slow_x"], tmp_path / "a")
    doc = json.loads((d / "manifest.json").read_text())
    edit(doc)
    (d / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError) as err:
        PolicyRunner(d)
    assert field in str(err.value) and "manifest.json" in str(err.value)


def test_poisoned_checkpoint_exports_a_nan_graph(policies):
    r = PolicyRunner(policies["nan"])
    r.push({k: np.zeros(s, np.float32) for k, s in r.spec.obs.items()})
    a = r.infer()
    assert np.isnan(a[:, :3]).all() and np.all(a[:, 3] == -1.0)


def test_bound_buffers_give_the_plain_session_result_on_every_call(policies):
    """ArtifactPolicy.act runs through preallocated io_binding buffers; each call must see that call's observation
    and noise (a binding that copied its inputs once would repeat the first answer), matching session.run."""
    runner = PolicyRunner(policies["plus_x"], seed=5)
    art = runner.artifact
    ref_rng = np.random.default_rng(5)
    art.rng = np.random.default_rng(5)
    for call in range(3):
        h = {k: np.random.default_rng(call).uniform(-1, 1, shape).astype(dt)
             for k, (shape, dt) in art.obs_spec.items()}
        got = art.act(h)
        noise = ref_rng.standard_normal(art.bound["policy"].inp["noise"].shape, dtype=np.float32)
        ref = art.run_raw("policy", {**{k: v[None] for k, v in h.items()}, "noise": noise})
        np.testing.assert_array_equal(got, ref["action"][0])
        got[:] = 99.0  # the caller's copy; the next call must not see it
    assert not np.any(art.bound["policy"].out["action"] == 99.0)
