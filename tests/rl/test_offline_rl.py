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
from store_testing import OFFLINE_RL_TINY, record_store, train_tiny_il

OBS_KEYS = ["robot_eef_pos", "robot_gripper", "goal"]
TINY_IL = {"task": "reach",
           "policy": {"horizon": 8, "n_action_steps": 4,
                      "denoiser": {"mlp_width": 32, "mlp_depth": 1, "mlp_time_dim": 16},
                      "encoder": {"state_hidden": [32], "state_feature_dim": 16}},
           "train": {"steps": 8, "batch_size": 8, "log_every": 4, "checkpoint_every": 8, "warmup_steps": 2,
                     "num_threads": 1},
           "eval": {"episodes": 0}}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return record_store(tmp_path_factory.mktemp("orl_data") / "reach.zarr", noise=0.3)


@pytest.fixture(scope="module")
def il_ckpt(store, tmp_path_factory) -> Path:
    return train_tiny_il(TINY_IL, store, OBS_KEYS, tmp_path_factory.mktemp("orl_il") / "il")


def overrides(store, il_ckpt, *extra) -> list[str]:
    return [f"policy={il_ckpt}", f"data.paths=[{store}]", *OFFLINE_RL_TINY, *extra]


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
    # configs/offline_rl/_base.yaml's measured floors (0.1 / 0.8), not the chunk checkpoint's 0.01 / 0.1
    assert (sc.rl_eta, sc.sigma_min, sc.sigma_max) == (1.0, 0.1, 0.8)
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
    # a policy trained on absolute end-effector targets: the RL stages drive delta-action envs only
    absolute = tmp_path / "absolute_ckpt"
    shutil.copytree(il_ckpt, absolute)
    doc = json.loads((absolute / "config.json").read_text())
    doc["extra"]["task_spec"]["ee_action"]["action_mode"] = "absolute"
    (absolute / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="action_mode 'absolute'.*'delta' actions only"):
        orl.main(CONFIG, overrides(store, absolute), out=str(out), show_progress=False)
    assert not out.exists()


class TargetQ(torch.nn.Module):
    """A known Q on the normalised executed chunk: 10 - ||a - target||^2 (a low-Q region away from target)."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target = target

    def min_q(self, feat, a):
        return 10.0 - ((a - self.target) ** 2).sum(-1)


def shifted(policy, c: float):
    """A copy whose epsilon head is biased by c: every DDIM x0 estimate moves by -c sqrt((1-abar)/abar), so the
    sampled chunk moves down (c > 0) or up (c < 0)."""
    import copy

    out = copy.deepcopy(policy)
    with torch.no_grad():
        out.denoiser.out[-1].bias += c
    return out


def test_gate_step_rejects_a_worse_candidate_and_accepts_a_better_one(store, il_ckpt, tiny_run, tmp_path):
    """rl100.md §12 test 8 through the stage's own gate_step (what its loop calls every gate.every updates),
    with the stage's AM-Q (real policy sampler, the run's real transition ensemble) and a known Q."""
    from policies.rl.denoise_ppo import chain_log_probs, sample_chain
    from policies.rl.transition import TransitionEnsemble

    cfg = orl.resolve_config(CONFIG, overrides(store, il_ckpt), None)
    behaviour = orl.load_policy(cfg).requires_grad_(False)
    data = orl.load_chunks(cfg, behaviour)
    model = TransitionEnsemble.load(tiny_run[0] / "dynamics")
    starts = data.feat[:32]
    a_b = orl.policy_action(behaviour, starts, 4, 0.0, torch.Generator().manual_seed(0))
    q = TargetQ(a_b.mean(0) - 0.3)  # the better region lies below the behaviour's actions

    def amq(p):
        return orl.amq_of(p, starts, q, model, horizon=2, steps=4, eta=0.0, seed=5)

    state = orl.GateState(amq(behaviour), amq(behaviour))
    before = {k: v.clone() for k, v in behaviour.state_dict().items()}
    log = tmp_path / "gate.jsonl"

    worse = shifted(behaviour, -0.75)
    d = orl.gate_step(2, worse, behaviour, state, amq, cfg.gate, log)
    assert d["amq_new"] < d["amq_old"] and not d["accepted"] and d["reverted"]
    assert all(torch.equal(behaviour.state_dict()[k], before[k]) for k in before)  # pi_i untouched
    assert all(torch.equal(worse.state_dict()[k], before[k]) for k in before)  # the candidate reverted
    assert (state.n_accepted, state.n_rejected) == (0, 1)

    better = shifted(behaviour, 0.75)
    d = orl.gate_step(4, better, behaviour, state, amq, cfg.gate, log)
    assert d["amq_new"] - d["amq_old"] >= 0.05 * abs(d["amq_old"]) and d["accepted"]
    assert all(torch.equal(behaviour.state_dict()[k], better.state_dict()[k]) for k in before)  # pi_i <- pi
    assert state.amq_behaviour == d["amq_new"] and state.n_accepted == 1
    assert [json.loads(ln)["accepted"] for ln in log.read_text().splitlines()] == [False, True]
    # the next PPO ratio is exactly 1: chains of the new pi_i scored by the candidate
    chain = sample_chain(behaviour, None, steps=4, generator=torch.Generator().manual_seed(1), cond=data.feat[:8])
    new = chain_log_probs(better, chain.cond, chain.chain, chain.timesteps, chain.prev_timesteps)
    assert torch.equal(new, chain.log_probs)

    # the official strict mode: a worse candidate is rejected but keeps its weights (no revert)
    strict = cfg.gate.__class__(mode="strict_no_revert")
    worse = shifted(behaviour, -0.75)
    kept = {k: v.clone() for k, v in worse.state_dict().items()}
    d = orl.gate_step(6, worse, behaviour, state, amq, strict)
    assert not d["accepted"] and not d["reverted"]
    assert all(torch.equal(worse.state_dict()[k], kept[k]) for k in kept)


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "offline_rl").glob("[!_]*.yaml")), ids=lambda p: p.stem)
def test_task_configs_load_and_match_the_il_task(path):
    from robotstack.core.config import load_config
    from robotstack.train.il import ILConfig

    cfg = load_config(orl.OfflineRLConfig, path)
    assert cfg.task == load_config(ILConfig, ROOT / "configs" / "il" / path.name).task
    assert (cfg.gate.delta, cfg.gate.mode, cfg.critic.expectile, cfg.ppo.clip_eps) == (0.05, "delta_revert", 0.7, 0.25)
    assert (cfg.dynamics.members, cfg.dynamics.elites) == (7, 5)


def test_cli_verb_parses():
    from robotstack.cli import build_parser

    args = build_parser().parse_args(["train", "offline-rl", "--config", "c.yaml", "gate.every=5", "--out", "r"])
    assert args.func.__name__ == "cmd_train_offline_rl" and args.overrides == ["gate.every=5"] and args.out == "r"


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_continues(store, il_ckpt, tmp_path):
    """A real `robotstack train offline-rl` subprocess sent SIGINT mid-PPO: exit 130, the checkpoint of the update
    it reached (summary interrupted), and --resume finishes the run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from robotstack.train.common import read_metrics

    run = tmp_path / "run"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "robotstack.cli", "train", "offline-rl", "--config", CONFIG, "--out", str(run),
            "--quiet", *overrides(store, il_ckpt, "train.steps=100000", "train.checkpoint_every=100000")]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            rows = read_metrics(run) if (run / "metrics.csv").exists() else []
            if rows and rows[-1]["step"] >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    summary = json.loads((run / "summary.json").read_text())
    step = json.loads((run / "checkpoints" / "latest" / "train_state.json").read_text())["step"]
    assert summary["interrupted"] is True and summary["steps"] == step >= 3
    done = orl.main(None, [f"train.steps={step + 2}"], resume=str(run), show_progress=False)
    assert done["interrupted"] is False and done["steps"] == step + 2 and done["steps_this_run"] == 2
