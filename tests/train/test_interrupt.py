"""Ctrl-C during a training command (a real `robotstack` subprocess sent SIGINT mid-run) saves a checkpoint at
the step it reached and exits with 130; `--resume RUN_DIR` continues from that step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robotstack.train.common import read_metrics

ROOT = Path(__file__).resolve().parents[2]
LONG = "train.steps=1000000"  # never reached: the run is interrupted


def _run(argv: list[str], **kw) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "robotstack.cli", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for the subprocess; on timeout kill it (no orphans left running) and fail with its output."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{proc.args} still running after {timeout} s:\n{proc.communicate()[0]}")


def _interrupt_once_logging(proc: subprocess.Popen, run: Path, min_step: int = 4, timeout: float = 600.0) -> str:
    """Wait until metrics.csv shows step >= min_step (training is running), then send SIGINT."""
    deadline, rows = time.monotonic() + timeout, []
    while time.monotonic() < deadline and proc.poll() is None:
        rows = read_metrics(run) if (run / "metrics.csv").exists() else []
        if rows and rows[-1]["step"] >= min_step:
            break
        time.sleep(0.2)
    if proc.poll() is not None:
        pytest.fail(f"exited before training got going:\n{_finish(proc, 60)}")
    if not rows:
        proc.kill()
        pytest.fail(f"no training step logged within {timeout} s:\n{_finish(proc, 60)}")
    proc.send_signal(signal.SIGINT)
    out = _finish(proc, 300)
    assert proc.returncode == 130, out
    return out


def _latest_step(run: Path) -> int:
    latest = run / "checkpoints" / "latest"
    step = json.loads((latest / "train_state.json").read_text())["step"]
    assert latest.resolve().name == f"step_{step}"
    return step


@pytest.mark.parametrize("stage", ["il", "distill"])
def test_sigint_saves_the_current_step_and_resume_continues(stage, tiny_config_file, tiny_teacher, tmp_path):
    run = tmp_path / "run"
    if stage == "il":
        start = ["train", "il", "--config", str(tiny_config_file), "train.checkpoint_every=0", "train.log_every=2"]
    else:
        start = ["distill", "--config", str(ROOT / "configs/distill/ctm.yaml"), f"teacher={tiny_teacher}",
                 "train.batch_size=4", "train.log_every=2", "train.checkpoint_every=0", "policy.bins=10"]
    out = _interrupt_once_logging(_run([*start, LONG, "--out", str(run), "--quiet"]), run)
    step = _latest_step(run)  # checkpoint_every=0: the only checkpoint is the Ctrl-C one
    assert step >= 4 and "interrupted: checkpoint saved at step" in out
    assert [p.name for p in (run / "checkpoints").glob("step_*")] == [f"step_{step}"]

    verb = ["train", "il"] if stage == "il" else ["distill"]
    resumed = _run([*verb, "--resume", str(run), f"train.steps={step + 4}", "--quiet"])
    out = _finish(resumed, 600)  # generous: startup (torch, MuJoCo) is slow on shared 2-core machines
    assert resumed.returncode == 0, out
    assert _latest_step(run) == step + 4
    logged = [int(r["step"]) for r in read_metrics(run) if "loss" in r]
    assert logged == sorted(set(logged)) and logged[-1] == step + 4  # continued, no duplicated rows
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps_this_run"] == 4 and summary["interrupted"] is False
