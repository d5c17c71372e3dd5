"""`robotstack train il`: CLI smoke run, checkpoint layout, resume bit-exactness, determinism, config errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from robotstack.cli import main as cli
from robotstack.core.config import load_config
from robotstack.core.errors import ConfigError
from robotstack.train.common import read_metrics, torch_gen
from robotstack.train.il import ILConfig, build_policy, diffusion_noise, il_loss, load_data, train


def _losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]


def test_cli_smoke_writes_checkpoints_logs_and_config(tiny_config_file, tmp_path, capsys):
    run = tmp_path / "run"
    code = cli(["train", "il", "--config", str(tiny_config_file), "--out", str(run), "--quiet",
                "train.steps=6", "eval.episodes=1", "eval.max_episode_steps=5"])
    assert code == 0
    for step in (4, 6):
        d = run / "checkpoints" / f"step_{step}"
        for name in ("model.safetensors", "ema.safetensors", "config.json", "optimizer.safetensors",
                     "train_state.json"):
            assert (d / name).is_file(), d / name
    latest = run / "checkpoints" / "latest"
    assert latest.is_symlink() and latest.resolve().name == "step_6"
    assert json.loads((latest / "train_state.json").read_text())["step"] == 6
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["train"]["steps"] == 6 and resolved["task"] == "reach"
    rows = read_metrics(run)
    assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6]
    assert all(k in rows[0] for k in ("loss", "lr", "steps_per_s", "samples_per_s"))
    assert any("eval/success_rate" in r for r in rows)
    assert list((run / "tb").iterdir())
    assert (run / "eval" / "step_6" / "episodes.json").is_file()
    from policies.checkpoint import load_checkpoint, read_config

    policy = load_checkpoint(latest, weights="ema")
    assert policy.normalizer.is_fitted()
    _, pcfg, extra = read_config(latest)
    assert extra["task"] == "reach" and pcfg.action_dim == 4 and pcfg.obs_shapes["goal"] == (3,)
    assert "train il" in capsys.readouterr().out  # summary table


def test_unknown_config_key_is_an_error(tiny_config_file, tmp_path, capsys):
    with pytest.raises(ConfigError, match="stepz"):
        load_config(ILConfig, tiny_config_file, ["train.stepz=3"])
    code = cli(["train", "il", "--config", str(tiny_config_file), "--out", str(tmp_path / "r"), "policy.foo=1"])
    assert code == 2
    assert "foo" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="obs_keys"):
        load_data(load_config(ILConfig, tiny_config_file, ["data.obs_keys=[no_such_key]"]))


def test_il_loss_matches_policy_compute_loss(tiny_config_file):
    cfg = load_config(ILConfig, tiny_config_file)
    data = load_data(cfg)
    policy = build_policy(cfg, data)
    from robotstack.train.il import batch_to_torch

    batch = batch_to_torch(data.sampler.sample_batch(np.arange(6)), cfg.data.obs_keys, torch.device("cpu"))
    t, eps = diffusion_noise(policy, 6, torch_gen(0, 3, 1))
    ours, _ = il_loss(policy, batch, t, eps)
    ref, _ = policy.compute_loss(batch, generator=torch_gen(0, 3, 1))
    assert torch.equal(ours, ref)


def test_resume_is_bit_exact(tiny_config_file, tmp_path):
    cfg = load_config(ILConfig, tiny_config_file, ["train.steps=10", "train.checkpoint_every=0"])
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(cfg, straight, show_progress=False)
    train(cfg, split, show_progress=False, stop_at=5)  # = killed right after the step-5 checkpoint
    assert json.loads((split / "checkpoints" / "latest" / "train_state.json").read_text())["step"] == 5
    summary = train(cfg, split, resume=True, show_progress=False)
    assert summary["steps_this_run"] == 5
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = load_file(str(straight / "checkpoints" / "latest" / name))
        b = load_file(str(split / "checkpoints" / "latest" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k} differs after resume"
    assert _losses(straight) == _losses(split)


def test_resume_via_cli_continues_from_run_dir_config(tiny_config_file, tmp_path):
    run = tmp_path / "run"
    cfg = load_config(ILConfig, tiny_config_file)
    train(cfg, run, show_progress=False, stop_at=4)
    assert cli(["train", "il", "--resume", str(run), "--quiet"]) == 0
    assert (run / "checkpoints" / "latest").resolve().name == "step_8"
    assert [s for s, _ in _losses(run)] == [2, 4, 6, 8]  # no duplicated rows
    assert cli(["train", "il", "--config", str(tiny_config_file), "--out", str(run)]) == 2  # would clobber


def test_same_seed_same_loss_curve(tiny_config_file, tmp_path):
    cfg = load_config(ILConfig, tiny_config_file)
    train(cfg, tmp_path / "a", show_progress=False)
    train(cfg, tmp_path / "b", show_progress=False)
    train(load_config(ILConfig, tiny_config_file, ["train.seed=1"]), tmp_path / "c", show_progress=False)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    assert _losses(tmp_path / "a") != _losses(tmp_path / "c")
