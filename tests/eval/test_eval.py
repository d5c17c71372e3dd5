"""`robotstack eval` on a real MuJoCo task with a tiny (untrained) checkpoint: per-episode JSON, summary,
seeds, video, parallel envs, EMA selection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from policies.checkpoint import save_checkpoint
from policies.diffusion.config import DenoiserConfig, DiffusionPolicyConfig, EncoderConfig
from policies.diffusion.model import DiffusionPolicy
from robotstack.cli import main as cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = DiffusionPolicyConfig(obs_shapes={"robot_eef_pos": (3,), "robot_gripper": (1,), "goal": (3,)},
                                action_dim=4, horizon=8, n_action_steps=4,
                                denoiser=DenoiserConfig(mlp_width=32, mlp_depth=1, mlp_time_dim=16),
                                encoder=EncoderConfig(state_hidden=(32,), state_feature_dim=16))
    policy = DiffusionPolicy(cfg)
    rng = np.random.default_rng(0)
    policy.fit_normalizer({"robot_eef_pos": rng.uniform(0.2, 0.7, (50, 3)), "robot_gripper": rng.uniform(0, 0.08, (50, 1)),
                           "goal": rng.uniform(0.2, 0.7, (50, 3)), "action": rng.uniform(-1, 1, (50, 4))})
    path = tmp_path_factory.mktemp("ckpt") / "step_0"
    save_checkpoint(path, policy, policy, extra={"task": "reach", "step": 0})
    return path


def test_eval_cli_writes_episodes_and_summary(checkpoint, tmp_path, capsys):
    out = tmp_path / "ev"
    code = cli(["eval", "--checkpoint", str(checkpoint), "--episodes", "2", "--max-episode-steps", "6",
                "--steps", "3", "--seed", "7", "--video", "--video-episodes", "1", "--out", str(out), "--quiet"])
    assert code == 0
    episodes = json.loads((out / "episodes.json").read_text())
    assert [e["seed"] for e in episodes] == [7, 8]
    assert all(set(e) == {"episode", "seed", "success", "length", "return"} for e in episodes)
    assert all(1 <= e["length"] <= 6 for e in episodes)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 2 and 0.0 <= summary["ci95_low"] <= summary["ci95_high"] <= 1.0
    assert summary["settings"]["weights"] == "ema" and summary["settings"]["task"] == "reach"
    videos = list((out / "videos").iterdir())
    assert len(videos) == 1 and videos[0].suffix in (".gif", ".mp4") and videos[0].stat().st_size > 0
    assert "95% CI (Wilson)" in capsys.readouterr().out


def test_eval_is_reproducible_and_no_ema_works(checkpoint, tmp_path):
    from robotstack.eval.rollout import evaluate_checkpoint

    kw = dict(max_episode_steps=5, steps=2, show_progress=False)
    a, _ = evaluate_checkpoint(checkpoint, 2, ema=False, out_dir=tmp_path / "a", **kw)
    b, _ = evaluate_checkpoint(checkpoint, 2, ema=False, out_dir=tmp_path / "b", **kw)
    assert (tmp_path / "a" / "episodes.json").read_text() == (tmp_path / "b" / "episodes.json").read_text()
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["settings"]["weights"] == "model"


def test_eval_parallel_envs_async(checkpoint, tmp_path):
    from robotstack.eval.rollout import evaluate_checkpoint

    result, out = evaluate_checkpoint(checkpoint, 3, num_envs=2, max_episode_steps=4, steps=2,
                                      out_dir=tmp_path / "p", show_progress=False)
    assert [e.seed for e in result.episodes] == [100_000, 100_001, 100_002]
    assert all(e.length == 4 or e.success for e in result.episodes)


def test_eval_unknown_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert cli(["eval", "--checkpoint", str(tmp_path / "nope"), "--episodes", "1"]) == 2
    assert "config.json" in capsys.readouterr().err


def test_eval_cli_opens_a_consistency_student_checkpoint(checkpoint, tmp_path, capsys):
    """The one loader: a student checkpoint (policy "consistency", no EMA file) evaluates like a teacher's.
    (Old code: `robotstack eval` refused it with "unknown policy 'consistency'".)"""
    from policies.checkpoint import load_checkpoint
    from policies.consistency.config import ConsistencyConfig, ConsistencyPolicyConfig
    from policies.consistency.model import ConsistencyPolicy, warm_start_from

    teacher = load_checkpoint(checkpoint)
    student = ConsistencyPolicy(ConsistencyPolicyConfig(base=teacher.config, consistency=ConsistencyConfig()))
    warm_start_from(student, teacher)
    save_checkpoint(tmp_path / "student", student, extra={"task": "reach", "stage": "distill"})
    out = tmp_path / "ev"
    code = cli(["eval", "--checkpoint", str(tmp_path / "student"), "--episodes", "2", "--max-episode-steps", "5",
                "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 2 and summary["settings"]["weights"] == "model"
    assert "95% CI (Wilson)" in capsys.readouterr().out
