"""DDP: the same `robotstack train il` command under torchrun with 2 gloo CPU processes gives the weights of
one process training on the same global batch (allclose: only the float summation order differs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from robotstack.train.il import build_policy, load_data, resolve_config, train


def test_ddp_two_gloo_processes_match_single_process(tiny_config_file, tmp_path):
    overrides = ["train.steps=3", "train.batch_size=8", "train.checkpoint_every=0", "train.log_every=1",
                 "train.lr=1e-4", "train.warmup_steps=0"]
    single = tmp_path / "single"
    train(resolve_config(str(tiny_config_file), overrides, None), single, show_progress=False)

    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "robotstack.cli", "train", "il", "--config", str(tiny_config_file), "--out", str(ddp), "--quiet",
           *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((ddp / "summary.json").read_text())["world_size"] == 2

    a = load_file(str(single / "checkpoints" / "latest" / "model.safetensors"))
    b = load_file(str(ddp / "checkpoints" / "latest" / "model.safetensors"))
    cfg = resolve_config(str(tiny_config_file), overrides, None)
    start = build_policy(cfg, load_data(cfg)).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
    assert not torch.equal(a["denoiser.inp.weight"], start["denoiser.inp.weight"])  # the steps did move weights
    # the global-batch loss logged by DDP is the single-process loss
    from robotstack.train.common import read_metrics

    la = [r["loss"] for r in read_metrics(single) if "loss" in r]
    lb = [r["loss"] for r in read_metrics(ddp) if "loss" in r]
    torch.testing.assert_close(torch.tensor(lb), torch.tensor(la), rtol=1e-5, atol=1e-6)
