"""bench/bench_online_rl.py on a tiny real online run (reach, a tiny real IL checkpoint): the curve it records is
the run's own (initial and final evaluations, one row per update, env steps), and re-running the same variant
resumes the finished run with the policy and overrides it was started with instead of starting over."""

from __future__ import annotations

import json

import pytest

from store_testing import TINY_IL, record_store, train_tiny_il

from bench import bench_online_rl

TINY_ONLINE = ["env.num_envs=1", "train.env_steps=160", "train.rollout_env_steps=80", "ppo.minibatch_size=16",
               "ppo.epochs=1", "distill.enabled=false", "eval.episodes=2", "eval.every=1", "eval.num_envs=1"]


@pytest.fixture(scope="module")
def il_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_online")
    store = record_store(root / "reach.zarr", episodes=2)
    return train_tiny_il(TINY_IL, store, ["robot_eef_pos", "robot_gripper", "goal"], root / "il")


def test_records_the_runs_curve_and_resumes(il_ckpt, tmp_path):
    row = bench_online_rl.run("reach", str(il_ckpt), "tiny", TINY_ONLINE, tmp_path, quiet=True)
    evals, updates = row["evals"], row["updates"]
    assert evals[0]["env_steps"] == 0 and evals[-1]["env_steps"] == row["env_steps"] >= 160
    assert len(evals) == 1 + len(updates) and all(0 <= e["success"] <= 1 for e in evals)  # eval.every=1
    assert [u["env_steps"] for u in updates] == sorted(u["env_steps"] for u in updates)
    assert row["overrides"] == TINY_ONLINE and row["resolved"]["train"]["env_steps"] == 160
    assert row["rollout_s"] > 0 and row["wall_s"] > 0
    again = bench_online_rl.run("reach", None, "tiny", [], tmp_path, quiet=True)  # resume: nothing left to do
    assert json.dumps(again["evals"]) == json.dumps(evals)  # json: NaN (no episode ended in an update) == NaN
    assert json.dumps(again["updates"]) == json.dumps(updates) and again["overrides"] == TINY_ONLINE
    text = bench_online_rl.table({"reach@tiny": again})
    assert "reach@tiny" in text and "env.num_envs=1" in text
    assert json.loads((tmp_path / "reach@tiny" / "bench_start.json").read_text())["policy"] == str(il_ckpt)
