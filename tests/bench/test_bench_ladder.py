"""bench/bench_ladder.py's parts on a tiny real reach store: the regression BC rung (policies/bc trained by
`train il` with policy.kind=mlp_bc, saved/loaded by policies.checkpoint, run by eval.rollout.evaluate) and the
expert-replay rung (a perturbed recorded action must be reported as diverged)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from bench.bench_il import record_demos
from bench.bench_ladder import replay_store
from robotstack.core.config import from_dict
from robotstack.core.errors import ConfigError
from robotstack.train.common import read_metrics
from robotstack.train.il import ILConfig, train

from policies.bc.model import MLPBCPolicy
from policies.checkpoint import load_checkpoint, read_config

OBS_KEYS = ["robot_eef_pos", "robot_gripper", "goal"]


@pytest.fixture(scope="module")
def reach_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ladder") / "reach.zarr"
    record_demos("reach", (), 96, path, demos=3, noise=0.2)
    return path


def bc_doc(store, **policy) -> dict:
    return {"task": "reach", "data": {"paths": [str(store)], "obs_keys": OBS_KEYS},
            "policy": {"kind": "mlp_bc", "horizon": 8, "n_action_steps": 4, "obs_norm": "meanstd",
                       "denoiser": {"mlp_width": 32, "mlp_depth": 2},
                       "encoder": {"state_hidden": [32], "state_feature_dim": 16}, **policy},
            "train": {"steps": 30, "batch_size": 16, "log_every": 5, "checkpoint_every": 0, "warmup_steps": 0,
                      "num_threads": 1, "lr": 3e-3},
            "eval": {"episodes": 0}}


def test_mlp_bc_trains_saves_loads_and_runs_in_evaluate(reach_store, tmp_path):
    from robotstack.eval.rollout import evaluate

    run = tmp_path / "bc"
    train(from_dict(ILConfig, bc_doc(reach_store)), run, show_progress=False)
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert len(losses) == 6 and losses[-1] < 0.75 * losses[0], losses  # it regresses the chunk

    ckpt = run / "checkpoints" / "latest"
    name, cfg, extra = read_config(ckpt)
    assert name == "mlp_bc" and extra["task"] == "reach"
    assert (cfg.n_obs_steps, cfg.horizon, cfg.n_action_steps, cfg.base.obs_norm) == (2, 8, 4, "meanstd")
    policy = load_checkpoint(ckpt, weights="ema")
    assert isinstance(policy, MLPBCPolicy)
    assert (policy.normalizer.state_dict()[next(iter(policy.normalizer.state_dict()))] != 0).any()  # stats saved
    obs = {k: torch.randn(3, 2, *cfg.obs_shapes[k]) for k in OBS_KEYS}
    pred = policy.predict_action(obs, sampler="ddim", steps=10)
    assert pred.action.shape == (3, 4, 4) and pred.chunk.shape == (3, 8, 4)
    assert torch.equal(pred.chunk[:, 1:5], pred.action) and torch.isfinite(pred.chunk).all()
    assert torch.equal(policy.predict_action(obs).chunk, pred.chunk)  # deterministic regression

    result = evaluate(policy, "reach", episodes=2, max_episode_steps=15, show_progress=False)
    assert [e.episode for e in result.episodes] == [0, 1] and all(e.length > 0 for e in result.episodes)


def test_mlp_bc_config_errors_name_the_key(reach_store):
    with pytest.raises(ConfigError, match="policy.kind: 'mlp-bc'"):
        from_dict(ILConfig, bc_doc(reach_store, kind="mlp-bc"))
    with pytest.raises(ConfigError, match="policy.encoder: vib=True"):
        from_dict(ILConfig, bc_doc(reach_store, encoder={"vib": True}))


def test_replay_reproduces_the_store_and_reports_a_perturbed_episode(reach_store, tmp_path):
    from robotstack.data.store import EpisodeStore

    clean = replay_store("reach", reach_store)
    assert (clean["episodes"], clean["exact"], clean["outcome_reproduced"], clean["diverged"]) == (3, 1.0, 1.0, [])
    assert clean["max_state_dev"] <= clean["tol"] and "robot_eef_pos" in clean["compared_keys"]

    copy = tmp_path / "perturbed.zarr"
    shutil.copytree(reach_store, copy)
    with EpisodeStore.open(copy, mode="a") as store:
        sl = store.episode_slice(1)
        i = sl.start + 2  # a frame early in episode 1, so the rest of the episode runs from a different state
        action = np.asarray(store.array("action")[i]).copy()
        action[:3] = -np.sign(action[:3] + 1e-3)  # full speed the other way
        store.array("action")[i] = action
    bad = replay_store("reach", copy)
    assert bad["diverged"] == [1], bad
    assert bad["exact"] == pytest.approx(2 / 3) and bad["max_state_dev"] > 1e-3
