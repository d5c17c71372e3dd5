"""`robotstack distill` is driven like `train il`: YAML + dotted overrides (or the --checkpoint shortcut), run dir
with config.json, checkpoints/step_N + latest, metrics.csv + tb/, --resume (bit-exact), and its student opens
in `robotstack eval` like any checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from robotstack.cli import main as cli
from robotstack.core.config import load_config
from robotstack.core.errors import ConfigError
from robotstack.train.common import read_metrics
from robotstack.train.distill import DistillConfig, distill

ROOT = Path(__file__).resolve().parents[2]
TINY = ["train.steps=6", "train.batch_size=4", "train.log_every=2", "train.checkpoint_every=3", "policy.bins=10"]


def _losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]


def test_distill_cli_run_dir_layout_and_eval_of_the_student(tiny_teacher, tmp_path, capsys):
    run = tmp_path / "student"
    code = cli(["distill", "--config", str(ROOT / "configs/distill/ctm.yaml"), f"teacher={tiny_teacher}", *TINY,
                "--out", str(run), "--quiet"])
    assert code == 0
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["teacher"] == str(tiny_teacher) and resolved["train"]["steps"] == 6
    for step in (3, 6):
        for name in ("model.safetensors", "config.json", "optimizer.safetensors", "train_state.json"):
            assert (run / "checkpoints" / f"step_{step}" / name).is_file()
    latest = run / "checkpoints" / "latest"
    assert latest.is_symlink() and latest.resolve().name == "step_6"
    assert [s for s, _ in _losses(run)] == [2, 4, 6] and list((run / "tb").iterdir())
    assert "distill" in capsys.readouterr().out  # summary table
    from policies.checkpoint import load_checkpoint, read_config

    name, _, extra = read_config(latest)
    assert name == "consistency" and extra["task"] == "reach" and extra["stage"] == "distill"
    assert type(load_checkpoint(latest)).__name__ == "ConsistencyPolicy"
    # the one loader: `robotstack eval` opens the distilled student (old code: "unknown policy 'consistency'")
    out = tmp_path / "ev"
    assert cli(["eval", "--checkpoint", str(latest), "--episodes", "2", "--max-episode-steps", "5",
                "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 2 and summary["settings"]["task"] == "reach"


def test_distill_shortcut_flags_become_overrides(tiny_teacher, tmp_path):
    run = tmp_path / "s"
    assert cli(["distill", "--checkpoint", str(tiny_teacher), "--method", "rl100", "--steps", "2",
                "--batch-size", "4", "--out", str(run), "--quiet", "loss.teacher_steps=2"]) == 0
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["policy"]["method"] == "rl100" and resolved["train"]["steps"] == 2
    assert resolved["train"]["batch_size"] == 4 and resolved["loss"]["teacher_steps"] == 2
    assert (run / "checkpoints" / "latest" / "model.safetensors").is_file()
    assert cli(["distill", "--checkpoint", str(tiny_teacher), "--out", str(run)]) == 2  # would clobber


@pytest.mark.parametrize("method", ["ctm", "rl100"])
def test_distill_resume_is_bit_exact(tiny_teacher, tmp_path, method):
    cfg = load_config(DistillConfig, ROOT / f"configs/distill/{method}.yaml",
                      [f"teacher={tiny_teacher}", *TINY, "train.checkpoint_every=0", "loss.teacher_steps=2",
                       "loss.target_ema=0.5" if method == "ctm" else "loss.target_ema=0.0"])
    straight, split = tmp_path / "straight", tmp_path / "split"
    distill(cfg, straight, show_progress=False)
    distill(cfg, split, show_progress=False, stop_at=3)  # = killed right after the step-3 checkpoint
    _, summary = distill(cfg, split, resume=True, show_progress=False)
    assert summary["steps_this_run"] == 3
    names = ["model.safetensors", "optimizer.safetensors"] + (["ema.safetensors"] if method == "ctm" else [])
    for name in names:
        a = load_file(str(straight / "checkpoints" / "latest" / name))
        b = load_file(str(split / "checkpoints" / "latest" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert _losses(straight) == _losses(split)


def test_every_distill_config_loads():
    for path in sorted((ROOT / "configs" / "distill").glob("*.yaml")):
        cfg = load_config(DistillConfig, path, ["teacher=x"])
        assert cfg.policy.method in ("ctm", "rl100"), path
    with pytest.raises(ConfigError, match="steps"):
        load_config(DistillConfig, ROOT / "configs/distill/ctm.yaml", ["train.stepz=1"])
