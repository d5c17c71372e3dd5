"""`train offline-rl` (robotstack/train/offline_rl.py): RL-100 stage 2 on a real tiny reach store (scripted expert,
MuJoCo, zarr) and a real tiny IL checkpoint (train il, a few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import rl_testing  # noqa: F401  (one torch thread)
from robotstack.core.errors import ConfigError
from robotstack.train import offline_rl as orl

OBS_KEYS = ["robot_eef_pos", "robot_gripper", "goal"]
TINY_IL = {"task": "reach",
           "policy": {"horizon": 8, "n_action_steps": 4,
                      "denoiser": {"mlp_width": 32, "mlp_depth": 1, "mlp_time_dim": 16},
                      "encoder": {"state_hidden": [32], "state_feature_dim": 16}},
           "train": {"steps": 8, "batch_size": 8, "log_every": 4, "checkpoint_every": 8, "warmup_steps": 2,
                     "num_threads": 1},
           "eval": {"episodes": 0}}


def record(path: Path, task: str = "reach", episodes: int = 4, noise: float = 0.3) -> Path:
    import sim
    from robotstack.cli.record import open_or_create_store, record_scripted

    env = sim.make(task)
    store = open_or_create_store(path, zarr_format=3)
    try:
        record_scripted(env, sim.make_expert(env, noise=noise, seed=0), store, task, episodes, seed=0, noise=noise,
                        show_progress=False)
    finally:
        store.close()
        env.close()
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return record(tmp_path_factory.mktemp("orl_data") / "reach.zarr")


@pytest.fixture(scope="module")
def il_ckpt(store, tmp_path_factory) -> Path:
    from robotstack.core.config import from_dict
    from robotstack.train.il import ILConfig, train

    run = tmp_path_factory.mktemp("orl_il") / "il"
    train(from_dict(ILConfig, {**TINY_IL, "data": {"paths": [str(store)], "obs_keys": OBS_KEYS}}), run,
          show_progress=False)
    return run / "checkpoints" / "latest"


def overrides(store, il_ckpt, *extra) -> list[str]:
    return [f"policy={il_ckpt}", f"data.paths=[{store}]", "critic.steps=30", "critic.batch_size=64",
            "critic.hidden=[32,32]", "dynamics.hidden=[32]", "dynamics.weight_decay=[1.0e-5,1.0e-5]",
            "dynamics.max_epochs=5", "gate.every=2", "gate.horizon=2", "gate.batch_size=16", "train.steps=4",
            "train.batch_size=16", "train.lr=1.0e-3", "train.log_every=1", "train.checkpoint_every=2",
            "ppo.ddim_steps=4", *extra]


CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "offline_rl" / "reach.yaml")


@pytest.fixture(scope="module")
def tiny_run(store, il_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("orl_run") / "run"
    summary = orl.main(CONFIG, overrides(store, il_ckpt, "distill.enabled=true", "distill.batch_size=8"),
                       out=str(out), show_progress=False)
    return out, summary


def test_run_writes_the_contract_outputs(tiny_run):
    from policies.checkpoint import load_checkpoint, read_extra
    from policies.consistency.model import ConsistencyPolicy
    from policies.diffusion.model import DiffusionPolicy
    from policies.rl.critics import load_iql_critics
    from policies.rl.transition import TransitionEnsemble

    run, summary = tiny_run
    for key in ("amq_initial", "amq_final", "n_accepted", "n_rejected", "wall_s", "interrupted"):
        assert key in summary, key
    assert summary["interrupted"] is False and summary["steps"] == 4
    assert json.loads((run / "summary.json").read_text())["n_accepted"] == summary["n_accepted"]
    assert json.loads((run / "config.json").read_text())["task"] == "reach"
    assert (run / "metrics.csv").read_text().startswith("step,")
    gate = [json.loads(ln) for ln in (run / "gate.jsonl").read_text().splitlines()]
    assert [g["update"] for g in gate] == [2, 4]
    for g in gate:
        assert {"amq_old", "amq_new", "accepted", "mode"} <= set(g) and g["mode"] == "delta_revert"
    assert summary["n_accepted"] + summary["n_rejected"] == 2
    # the accepted policy: a normal diffusion checkpoint (eval / export open it), with the RL scheduler fields
    teacher = load_checkpoint(run / "checkpoints" / "latest")
    assert isinstance(teacher, DiffusionPolicy)
    sc = teacher.config.scheduler
    assert (sc.rl_eta, sc.sigma_min) == (1.0, 0.01) and sc.sigma_max == 0.1  # chunk default kept
    assert read_extra(run / "checkpoints" / "latest")["stage"] == "offline_rl"
    assert read_extra(run / "checkpoints" / "latest")["task_spec"]["control_hz"] > 0
    student = load_checkpoint(run / "student" / "checkpoints" / "latest")
    assert isinstance(student, ConsistencyPolicy)
    q, v, meta = load_iql_critics(run / "critics")
    assert meta["n_c"] == 4 and meta["action_size"] == 4 * teacher.config.action_dim
    assert q.q1.in_dim == meta["feat_dim"] + meta["action_size"]
    assert len(TransitionEnsemble.load(run / "dynamics").elite_idx) == 5
    # a rejected candidate was reverted: the stored candidate equals the accepted policy after the last gate
    cand = load_file(str(run / "checkpoints" / "latest" / orl.CANDIDATE_FILE))
    model = load_file(str(run / "checkpoints" / "latest" / "model.safetensors"))
    assert all(torch.equal(cand[k], model[k]) for k in model)


def test_resume_continues_to_the_same_result(store, il_ckpt, tmp_path, tiny_run):
    full, _ = tiny_run
    cfg = orl.resolve_config(CONFIG, overrides(store, il_ckpt, "distill.enabled=true", "distill.batch_size=8"), None)
    run = tmp_path / "run"
    first = orl.run(cfg, run, show_progress=False, stop_at=2)
    assert first["steps"] == 2
    second = orl.main(None, [], resume=str(run), show_progress=False)
    assert second["steps"] == 4 and second["steps_this_run"] == 2
    for sub in ("checkpoints/latest", "student/checkpoints/latest"):
        a, b = load_file(str(run / sub / "model.safetensors")), load_file(str(full / sub / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), sub
    assert (run / "gate.jsonl").read_text() == (full / "gate.jsonl").read_text()


def test_bad_configs_fail_before_any_work(store, il_ckpt, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="unknown key 'ppo.clip'"):
        orl.main(CONFIG, overrides(store, il_ckpt, "ppo.clip=0.2"), out=str(out), show_progress=False)
    with pytest.raises(ConfigError, match=r"extra.task = 'reach', expected the config's task 'push'"):
        orl.main(CONFIG, overrides(store, il_ckpt, "task=push"), out=str(out), show_progress=False)
    # a store without rewards, and one without an obs key the policy reads (copies with a key deleted)
    import shutil

    import zarr

    for key, msg in (("reward", r"bare_reward.zarr has no 'reward' key"), ("goal", r"lacks key 'goal'")):
        bare = tmp_path / f"bare_{key}.zarr"
        shutil.copytree(store, bare)
        del zarr.open_group(str(bare), mode="a")["data"][key]
        with pytest.raises(ConfigError, match=msg):
            orl.main(CONFIG, overrides(bare, il_ckpt), out=str(out), show_progress=False)
    assert not out.exists()
