"""DART demos (record_scripted(labels="clean"), `robotstack record --labels clean`): the noisy expert drives,
each frame is labelled with the clean expert's action in that state."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from store_testing import record_store

import sim
from robotstack.core import keys as K
from robotstack.data.store import EpisodeStore

OBS = [K.EEF_POS, K.EEF_QUAT, K.GRIPPER, K.OBJECT_STATE, K.GOAL]


@pytest.fixture(scope="module")
def push_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("dart")
    return {lab: record_store(root / f"{lab}.zarr", task="push", episodes=3, noise=0.4, labels=lab)
            for lab in ("executed", "clean")}


def test_clean_labels_are_the_clean_experts_action_on_the_same_noisy_states(push_stores):
    env = sim.make("push")
    clean_expert = sim.make_expert(env, noise=0.0)  # the push expert is memoryless: act(obs) is a pure function
    with EpisodeStore.open(push_stores["executed"]) as ex, EpisodeStore.open(push_stores["clean"]) as cl:
        assert ex.n_frames == cl.n_frames  # the same noisy rollouts: labels do not change what is executed
        differ = 0
        for i in range(cl.n_episodes):
            e, c = ex.episode(i), cl.episode(i)
            for k in OBS:
                np.testing.assert_array_equal(e[k], c[k])
            for t in range(len(c["action"])):
                want = clean_expert.act({k: c[k][t] for k in OBS})
                np.testing.assert_allclose(c["action"][t], want, atol=1e-6)
            differ += int(np.abs(e["action"] - c["action"]).max(axis=1).__gt__(1e-3).sum())
        assert differ > 0.5 * cl.n_frames  # noise 0.4: the executed actions are not the labels
        assert cl.episode_meta(0).policy_id.endswith("labels=clean")
        assert ex.episode_meta(0).policy_id == "expert(noise=0.4)"
    env.close()


def test_metaworld_expert_gives_clean_labels_too():
    env = sim.make("mw:reach-v3")
    expert = sim.make_expert(env, noise=0.5, seed=0)
    obs, _ = env.reset(seed=0)
    noisy = expert.act(obs)
    assert expert.clean_action is not None and expert.clean_action.shape == noisy.shape
    assert not np.allclose(noisy, expert.clean_action)
    env.close()


def test_clean_labels_need_a_scripted_device(tmp_path):
    r = subprocess.run([sys.executable, "-m", "robotstack.cli", "record", "--task", "push", "--device", "keyboard",
                        "--labels", "clean", "--out", str(tmp_path / "s.zarr")], capture_output=True, text=True)
    assert r.returncode != 0 and "--labels clean" in r.stderr and "scripted" in r.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_record_randomize_records_with_domain_randomisation_and_says_so(tmp_path):
    """`record --randomize` (deployment robustness: push demos with friction/mass randomised kept 0.80 of their
    MuJoCo success on the PyBullet arm server vs 0.70, bench_deploy): the episodes say how they were recorded, and
    a bad key fails by name before any store is created."""
    from robotstack.data.store import EpisodeStore

    out = tmp_path / "dr.zarr"
    r = subprocess.run([sys.executable, "-m", "robotstack.cli", "record", "--task", "push", "--episodes", "2",
                        "--noise", "0.2", "--randomize", '{"friction": 0.4, "mass": 0.5}', "--quiet",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with EpisodeStore.open(out) as s:
        ids = [m.policy_id for m in s.episode_metas()]
    assert ids == ["expert(noise=0.2), randomize(friction=0.4, mass=0.5)"] * 2
    bad = subprocess.run([sys.executable, "-m", "robotstack.cli", "record", "--task", "push", "--randomize",
                          '{"frcition": 0.4}', "--out", str(tmp_path / "bad.zarr")], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "frcition" in bad.stderr and not (tmp_path / "bad.zarr").exists()
