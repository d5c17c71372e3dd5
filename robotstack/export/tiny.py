"""A tiny untrained DiffusionPolicy exported through the real exporter: smoke tests, runtime fault tests and
bench/bench_control.py drive the production artifact path without training anything.

The action normalizer's fitted range decides what such a policy can output (DDIM clips the normalized sample to
[-1, 1]), so `action_range` gives a policy with a known behaviour: e.g. dx in [0.49, 0.51] is "push +x at half
speed" whatever the random weights do. `poison=True` sets the action normalizer's offset to NaN (a corrupt
checkpoint): the exported graph then yields NaN actions (the gripper dim, thresholded in the graph, stays finite).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robotstack.core import keys as K
from robotstack.export.onnx_export import export_artifact

from policies.checkpoint import save_checkpoint
from policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
from policies.diffusion.config import DenoiserConfig, EncoderConfig

DEFAULT_OBS = {K.EEF_POS: (3,), K.GOAL: (3,)}


def tiny_policy(action_dim: int, obs_shapes: dict[str, tuple[int, ...]] | None = None,
                action_range: list[tuple[float, float]] | None = None, poison: bool = False,
                seed: int = 0) -> DiffusionPolicy:
    """To=2, T=4, Ta=2 DiffusionPolicy with small MLPs; normalizer fitted to a unit box (obs) and action_range."""
    torch.manual_seed(seed)
    obs_shapes = dict(obs_shapes or DEFAULT_OBS)
    cfg = DiffusionPolicyConfig(obs_shapes=obs_shapes, action_dim=action_dim, n_obs_steps=2, horizon=4,
                                n_action_steps=2, denoiser=DenoiserConfig(mlp_width=32, mlp_depth=1, mlp_time_dim=16),
                                encoder=EncoderConfig(state_hidden=(32,), state_feature_dim=16,
                                                      rgb_channels=(8,), rgb_strides=(2,), rgb_num_keypoints=4,
                                                      rgb_feature_dim=8, rgb_groups=4))
    policy = DiffusionPolicy(cfg)
    rng = np.random.default_rng(seed)
    lo, hi = np.array(action_range or [(-1.0, 1.0)] * action_dim, dtype=np.float64).T
    data = {k: rng.uniform(-1.0, 1.0, (64, *s)) for k, s in obs_shapes.items() if not K.is_image_key(k)}
    data[K.ACTION] = rng.uniform(lo, hi, (64, action_dim))
    data = {k: v for k, v in data.items() if k in policy.normalizer.keys()}
    policy.fit_normalizer(data)
    if poison:
        st = policy.normalizer.stats[K.ACTION]
        policy.normalizer.set_stats(K.ACTION, scale=st.scale.numpy(), offset=np.full(st.shape, np.nan))
    return policy.eval()


def export_tiny(out: str | Path, task_spec: dict[str, Any], *, obs_shapes: dict[str, tuple[int, ...]] | None = None,
                action_range: list[tuple[float, float]] | None = None, poison: bool = False, seed: int = 0,
                ddim_steps: int = 2) -> Path:
    """Build a tiny policy for `task_spec` (a sim task spec) and export it (ddim) to `out`; returns `out`."""
    policy = tiny_policy(len(task_spec["action_names"]), obs_shapes, action_range, poison, seed)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(Path(tmp) / "checkpoint", policy, extra={"task": task_spec["task"]})
        export_artifact(ckpt, "ddim", out, steps=ddim_steps, task_spec=task_spec, seed=seed, parity_trials=1,
                        latency_runs=5)
    return Path(out)
