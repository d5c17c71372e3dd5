"""A tiny untrained DiffusionPolicy exported through the real exporter: smoke tests, runtime fault tests and
bench/bench_control.py drive the production artifact path without training anything.

The action normalizer's fitted range decides what such a policy can output (DDIM clips the normalized sample to
[-1, 1]), so `action_range` gives a policy with a known behaviour: e.g. dx in [0.49, 0.51] is "push +x at half
speed" whatever the random weights do. `poison=True` sets the action normalizer's offset to NaN (a corrupt
checkpoint): the exported graph then yields NaN actions (the gripper dim, thresholded in the graph, stays finite).

`tiny_scorer` is a best-of-N critic scorer of the docs/CONTRACTS.md interface (forward(obs {key: (B, To, D)}, actions
(B, N, h_a, Da)) -> (B, N), env units in, normalisation inside), built from policies.critics.chunked.ChunkCritic +
a Normalizer and untrained: the artifact tests and bench/bench_best_of_n.py export it beside a tiny policy without
depending on a trained critic (policies/critics/scorer.py). `prefer` adds a known linear preference over the
normalised executed actions (+ sum_t prefer . a_t), so a test knows which candidate region must win.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robotstack.core import keys as K
from robotstack.export.onnx_export import export_artifact

from policies.checkpoint import save_checkpoint
from policies.common.normalizer import Normalizer
from policies.critics.chunked import ChunkCritic, aggregate
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


@dataclasses.dataclass(frozen=True)
class TinyScorerConfig:
    """The scorer metadata the exporter reads (same field names as policies/critics/scorer.py ScorerConfig)."""

    obs_shapes: dict[str, tuple[int, ...]]
    n_obs_steps: int  # To
    action_dim: int  # Da
    chunk_len: int  # h_a
    agg: str = "min"


class TinyScorer(nn.Module):
    """obs {key: (B, To, D)}, actions (B, N, >= h_a, Da), env units -> (B, N): agg_i Q_i(s, a[:h_a]) + preference."""

    def __init__(self, config: TinyScorerConfig, hidden: Sequence[int] = (32, 32), num_qs: int = 2):
        super().__init__()
        self.config = c = config
        shapes = {**c.obs_shapes, K.ACTION: (c.action_dim,)}
        self.normalizer = Normalizer(shapes, {k: "minmax" for k in shapes})
        obs_dim = c.n_obs_steps * sum(int(np.prod(s)) for s in c.obs_shapes.values())
        self.critic = ChunkCritic(obs_dim, c.action_dim, c.chunk_len, num_qs, hidden)
        self.register_buffer("prefer", torch.zeros(c.action_dim))

    def forward(self, obs: dict[str, torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
        b, n = actions.shape[:2]
        feat = torch.cat([self.normalizer.normalize(k, obs[k].float()).reshape(b, -1) for k in self.config.obs_shapes],
                         -1)
        a = self.normalizer.normalize(K.ACTION, actions[:, :, :self.config.chunk_len].float())
        q = self.critic(feat.repeat_interleave(n, 0), a.reshape(b * n, -1, a.shape[-1]))  # (K, B*N)
        return aggregate(q, self.config.agg).reshape(b, n) + (a * self.prefer).sum((-1, -2))


def tiny_scorer(policy: torch.nn.Module, h_a: int | None = None, prefer: Sequence[float] | None = None,
                agg: str = "min", seed: int = 0, hidden: Sequence[int] = (32, 32)) -> TinyScorer:
    """A TinyScorer fitted to `policy`'s obs keys, To, Da and action range (its normaliser's stats); h_a defaults to
    the policy's Ta; `prefer` (Da,) weights the preference term (default 0: a plain critic ensemble); hidden
    (256, 256) is the size of policies/critics/scorer.py's default critic (bench_best_of_n)."""
    torch.manual_seed(seed)
    c = policy.config
    scorer = TinyScorer(TinyScorerConfig({k: tuple(s) for k, s in c.obs_shapes.items() if not K.is_image_key(k)},
                                         c.n_obs_steps, c.action_dim, h_a or c.n_action_steps, agg), hidden)
    for key in scorer.normalizer.keys():
        st = policy.normalizer.stats[key]
        scorer.normalizer.set_stats(key, scale=st.scale.numpy(), offset=st.offset.numpy())
    if prefer is not None:
        scorer.prefer.copy_(torch.as_tensor(prefer, dtype=torch.float32))
    return scorer.eval().requires_grad_(False)


def export_tiny(out: str | Path, task_spec: dict[str, Any], *, obs_shapes: dict[str, tuple[int, ...]] | None = None,
                action_range: list[tuple[float, float]] | None = None, poison: bool = False, seed: int = 0,
                ddim_steps: int = 2, critic_prefer: Sequence[float] | None = None, best_of_n: int = 0) -> Path:
    """Build a tiny policy for `task_spec` (a sim task spec) and export it (ddim) to `out`; returns `out`.
    best_of_n > 0 also exports a tiny_scorer (with `critic_prefer`) as the artifact's critic, default N best_of_n."""
    policy = tiny_policy(len(task_spec["action_names"]), obs_shapes, action_range, poison, seed)
    critic = tiny_scorer(policy, prefer=critic_prefer, seed=seed) if best_of_n > 0 else None
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(Path(tmp) / "checkpoint", policy, extra={"task": task_spec["task"]})
        export_artifact(ckpt, "ddim", out, steps=ddim_steps, task_spec=task_spec, seed=seed, parity_trials=1,
                        latency_runs=5, critic=critic, best_of_n=best_of_n or 1)
    return Path(out)
