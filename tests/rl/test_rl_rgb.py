"""RGB observations through the RL-100 stages: a tiny real push store recorded with the front camera (MuJoCo EGL,
zarr), a tiny real IL checkpoint on image + proprioception, then `train offline-rl` and `train online-rl` on it.

Each fix has its own check: encoder passes bounded by image pixels (offline chunk features, online next
features), offline PPO on the cached features (no CNN per batch), vector-env workers that render without a
MUJOCO_GL in the caller's environment; and both stages end to end with checkpoints that act on images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import rl_testing  # noqa: F401  (one torch thread)
from store_testing import OFFLINE_RL_TINY, record_store, train_tiny_il

from robotstack.train import offline_rl as orl

IMAGE = 32  # small frames keep the CNN cheap; the code paths are those of the 96x96 configs
OBS_KEYS = ["image_front", "robot_eef_pos", "robot_gripper", "goal"]
TINY_RGB_IL = {"task": "push",
               "policy": {"horizon": 8, "n_action_steps": 4,
                          "denoiser": {"mlp_width": 32, "mlp_depth": 1, "mlp_time_dim": 16},
                          "encoder": {"state_hidden": [32], "state_feature_dim": 16, "rgb_channels": [8, 8],
                                      "rgb_strides": [2, 1], "rgb_num_keypoints": 4, "rgb_feature_dim": 16,
                                      "rgb_groups": 4, "rgb_crop": [28, 28]}},
               "train": {"steps": 6, "batch_size": 8, "log_every": 3, "checkpoint_every": 6, "warmup_steps": 2,
                         "num_threads": 1},
               "eval": {"episodes": 0}}
ROOT = Path(__file__).resolve().parents[2]
ORL_CONFIG = str(ROOT / "configs" / "offline_rl" / "push.yaml")
ONL_CONFIG = str(ROOT / "configs" / "online_rl" / "push.yaml")


@pytest.fixture(scope="module")
def rgb_store(tmp_path_factory) -> Path:
    return record_store(tmp_path_factory.mktemp("rgb_data") / "push_front.zarr", task="push", episodes=3,
                        noise=0.3, cameras=("front",), image_size=IMAGE)


@pytest.fixture(scope="module")
def rgb_il(rgb_store, tmp_path_factory) -> Path:
    return train_tiny_il(TINY_RGB_IL, rgb_store, OBS_KEYS, tmp_path_factory.mktemp("rgb_il") / "il")


def orl_overrides(store, ckpt, *extra) -> list[str]:
    """The offline stage's tiny budget, smaller still where a CNN pass is the cost."""
    return [f"policy={ckpt}", f"data.paths=[{store}]", *OFFLINE_RL_TINY, "critic.steps=20",
            "critic.batch_size=32", "dynamics.max_epochs=3", "gate.batch_size=8", *extra]


class EncodeSpy:
    """Counts DiffusionPolicy.encode_obs calls and their row counts (the real method still runs)."""

    def __init__(self, monkeypatch):
        from policies.diffusion.model import DiffusionPolicy

        self.rows: list[int] = []
        real = DiffusionPolicy.encode_obs

        def spy(policy, obs, deterministic=None):
            self.rows.append(int(next(iter(obs.values())).shape[0]))
            return real(policy, obs, deterministic=deterministic)

        monkeypatch.setattr(DiffusionPolicy, "encode_obs", spy)


def test_chunk_features_are_encoded_in_blocks_bounded_by_image_pixels(rgb_store, rgb_il, monkeypatch):
    """load_chunks used to encode 2048 windows per pass (~4 GB of CNN activations at 96x96); now the rows per
    pass follow policies/rl/features.PIXEL_BUDGET, with the same features as one pass."""
    from policies.rl import features

    cfg = orl.resolve_config(ORL_CONFIG, orl_overrides(rgb_store, rgb_il), None)
    policy = orl.load_policy(cfg)
    monkeypatch.setattr(features, "PIXEL_BUDGET", 16 * 2 * IMAGE * IMAGE)  # 16 rows of To = 2 frames
    assert features.block_rows(policy.config) == 16
    spy = EncodeSpy(monkeypatch)
    data = orl.load_chunks(cfg, policy)
    n = data.feat.shape[0]
    assert n > 16 and spy.rows and max(spy.rows) <= 16
    assert len(spy.rows) == 2 * math.ceil(n / 16)  # starts and successors, nothing else
    whole = orl.load_chunks(cfg, policy, block=n)
    torch.testing.assert_close(data.feat, whole.feat, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(data.next_feat, whole.next_feat, atol=1e-5, rtol=1e-5)


def test_offline_ppo_samples_from_cached_features_not_images(rgb_store, rgb_il, tmp_path, monkeypatch):
    """The encoder is frozen, so PPO reads the features load_chunks cached: the only encoder passes of a run
    are load_chunks' (the loop used to re-encode every batch's camera windows)."""
    from policies.rl import features

    monkeypatch.setattr(features, "PIXEL_BUDGET", 1 << 30)  # one pass per side
    spy = EncodeSpy(monkeypatch)
    summary = orl.main(ORL_CONFIG, orl_overrides(rgb_store, rgb_il), out=str(tmp_path / "orl"), show_progress=False)
    assert summary["steps"] == 4 and not summary["interrupted"]
    assert len(spy.rows) == 2, spy.rows


def _image_obs_batch(policy, env_obs: dict, batch: int = 2) -> dict[str, torch.Tensor]:
    c = policy.config
    return {k: torch.from_numpy(np.stack([np.stack([env_obs[k]] * c.n_obs_steps)] * batch)) for k in c.obs_shapes}


def _cond(policy, obs) -> torch.Tensor:
    out = policy.encode_obs(obs)  # diffusion: EncoderOutput; consistency student: the features
    return getattr(out, "cond", out)


def test_collector_workers_render_without_mujoco_gl_and_encode_in_blocks(rgb_il, monkeypatch):
    """Two AsyncVectorEnv workers render the front camera although the caller set no MUJOCO_GL (spawned workers
    chose glfw and died: 'Renderer' object has no attribute '_mjr_context'), and the next-observation features
    of a collection are encoded in bounded blocks."""
    from policies.checkpoint import load_checkpoint
    from policies.rl import features
    from robotstack.train.online_rl import RLConfig, rl_ready
    from robotstack.train.rollouts import Collector

    monkeypatch.delenv("MUJOCO_GL", raising=False)
    policy = rl_ready(load_checkpoint(rgb_il), RLConfig(steps=3))
    col = Collector("push", 2, policy.config)
    try:
        monkeypatch.setattr(features, "PIXEL_BUDGET", 3 * 2 * IMAGE * IMAGE)  # 3 rows per pass
        spy = EncodeSpy(monkeypatch)
        roll = col.collect(policy, 24, 10_000, 0.99, torch.Generator().manual_seed(0), steps=3)
    finally:
        col.close()
    assert len(roll) >= 6 and roll.env_steps >= 24
    assert roll.cond.shape == roll.next_cond.shape and np.isfinite(roll.next_cond).all()
    # decisions are sampled for <= 2 envs at a time; the final next-feature pass is split into rows of <= 3
    assert max(spy.rows) <= 3 and sum(spy.rows) == 2 * len(roll)


def test_rgb_offline_then_online_produce_checkpoints_that_act_on_images(rgb_store, rgb_il, tmp_path):
    """`train offline-rl` then `train online-rl` (V warm-started from the offline critics, 2 env workers,
    joint CD) on the RGB checkpoint; every produced checkpoint loads and acts on a real camera observation."""
    import sim
    from policies.checkpoint import load_checkpoint, read_extra
    from robotstack.train import online_rl

    orl_run = tmp_path / "orl"
    s1 = orl.main(ORL_CONFIG, orl_overrides(rgb_store, rgb_il, "distill.enabled=true", "distill.batch_size=8"),
                  out=str(orl_run), show_progress=False)
    assert s1["steps"] == 4 and s1["n_accepted"] + s1["n_rejected"] == 2
    onl_run = tmp_path / "onl"
    s2 = online_rl.main(ONL_CONFIG, [f"policy={orl_run / 'checkpoints' / 'latest'}", f"critic={orl_run / 'critics'}",
                                     "env.num_envs=2", "train.env_steps=48", "train.rollout_env_steps=24",
                                     "rl.steps=3", "ppo.minibatch_size=8", "ppo.epochs=1", "ppo.value_hidden=[32]",
                                     "eval.episodes=1", "eval.num_envs=1", "eval.every=0", "eval.initial=false",
                                     "env.max_episode_steps=40", "eval.max_episode_steps=40"],
                        out=str(onl_run), show_progress=False)
    assert s2["env_steps"] == 48 and s2["updates"] == 2 and s2["value_from"].startswith("iql:")
    assert s2["eval_success_rate"] is not None and s2["student_eval_success_rate"] is not None

    env = sim.make("push", cameras=("front",), image_size=IMAGE)
    try:
        env_obs, _ = env.reset(seed=3)
    finally:
        env.close()
    assert env_obs["image_front"].shape == (IMAGE, IMAGE, 3)
    for ckpt in (orl_run / "checkpoints" / "latest", orl_run / "student" / "checkpoints" / "latest",
                 onl_run / "checkpoints" / "latest", onl_run / "student" / "checkpoints" / "latest"):
        policy = load_checkpoint(ckpt)
        assert "image_front" in policy.config.obs_shapes, ckpt
        obs = _image_obs_batch(policy, env_obs)
        act = policy.predict_action(obs).action
        assert act.shape == (2, policy.config.n_action_steps, policy.config.action_dim) and torch.isfinite(act).all()
        # the image matters: a black frame changes the features the action is computed from
        dark = {**obs, "image_front": torch.zeros_like(obs["image_front"])}
        assert not torch.allclose(_cond(policy, obs), _cond(policy, dark)), ckpt
        assert read_extra(ckpt)["task"] == "push"
