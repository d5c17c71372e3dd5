"""IQL critics for RL-100's offline stage (rl100.md §4.2) and the value warm-start of the online stage (§5).

Glossary: B batch, Dc encoder-feature (cond) width, Ta executed actions, Da action dim, n_c chunk length
(RL-100: one decision = n_c env steps; single-action mode n_c = 1).

Critics read the frozen encoder's features (B, Dc) (the code shares the IL encoder and keeps it fixed) and the
executed action flattened (B, Ta*Da):

    L_V = E[ |tau - 1(Qt - V < 0)| (Qt - V)^2 ],     Qt = min(Q1_target, Q2_target)(s, a), tau = 0.7
    L_Q = E[ (R + gamma^{n_c} (1 - terminated) V(s') - Q_i(s, a))^2 ],   R = sum_{j<n_c} gamma^j r_{t+j}
    A_off = min(Q1, Q2)(s, a) - V(s)   (batch-normalised by the PPO side)

Functions are pure (tensors in, tensors out); the loop, optimisers and target updates live in the stage.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

IQL_EXPECTILE = 0.7


class MLP(nn.Module):
    """(B, in_dim) -> (B,) scalar head; Mish + optional LayerNorm (the chunk scripts use LayerNorm)."""

    def __init__(self, in_dim: int, hidden: Sequence[int] = (512, 512), layer_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h)] + ([nn.LayerNorm(h)] if layer_norm else []) + [nn.Mish()]
            d = h
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)
        self.in_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"critic input has width {x.shape[-1]}, expected {self.in_dim}")
        return self.net(x).squeeze(-1)


class ValueNet(nn.Module):
    """V(s): features (B, Dc) -> (B,)."""

    def __init__(self, feat_dim: int, hidden: Sequence[int] = (512, 512), layer_norm: bool = False):
        super().__init__()
        self.head = MLP(feat_dim, hidden, layer_norm)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.head(feat)


class DoubleQ(nn.Module):
    """Q1, Q2(s, a): features (B, Dc), executed action (B, Ta, Da) or (B, Ta*Da) -> two (B,) tensors."""

    def __init__(self, feat_dim: int, action_size: int, hidden: Sequence[int] = (512, 512),
                 layer_norm: bool = False):
        super().__init__()
        self.q1 = MLP(feat_dim + action_size, hidden, layer_norm)
        self.q2 = MLP(feat_dim + action_size, hidden, layer_norm)

    def forward(self, feat: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([feat, action.reshape(action.shape[0], -1)], -1)
        return self.q1(x), self.q2(x)

    def min_q(self, feat: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return torch.minimum(*self(feat, action))


def expectile_loss(diff: torch.Tensor, tau: float = IQL_EXPECTILE) -> torch.Tensor:
    """mean |tau - 1(diff < 0)| diff^2 over diff = Q - V. Its minimiser over a constant V is the tau-expectile
    of Q: the mean at tau = 0.5, the max of the support as tau -> 1."""
    if not 0 < tau < 1:
        raise ValueError(f"expectile tau must be in (0, 1), got {tau}")
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return (weight * diff ** 2).mean()


def chunk_reward_sum(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, n_c) per-env-step rewards of one decision (zeros after an episode end) -> (B,) sum_j gamma^j r_j."""
    n = rewards.shape[-1]
    disc = gamma ** torch.arange(n, dtype=rewards.dtype, device=rewards.device)
    return (rewards * disc).sum(-1)


def td_target(reward_sum: torch.Tensor, next_v: torch.Tensor, terminated: torch.Tensor, gamma: float,
              n_steps: int | torch.Tensor = 1) -> torch.Tensor:
    """(B,) R + gamma^{n_steps} (1 - terminated) V(s'), detached. n_steps = n_c for a full chunk (int) or (B,)
    when a decision was cut short by a truncation (bootstrap over the steps actually taken). Truncation is not
    termination: a truncated decision still bootstraps from V(s_final)."""
    disc = gamma ** torch.as_tensor(n_steps, dtype=reward_sum.dtype, device=reward_sum.device)
    return (reward_sum + disc * (1.0 - terminated.to(reward_sum.dtype)) * next_v).detach()


def iql_value_loss(v: torch.Tensor, q_target_min: torch.Tensor, tau: float = IQL_EXPECTILE) -> torch.Tensor:
    """v (B,) = V(s), q_target_min (B,) = min of the target Q nets (detached) -> expectile regression."""
    return expectile_loss(q_target_min.detach() - v, tau)


def iql_q_loss(q1: torch.Tensor, q2: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Both heads regress the same TD target (B,) built from V(s'), never from max Q (IQL's in-sample trick)."""
    target = target.detach()
    return ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()


def iql_advantage(q_min: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A_off = min(Q1, Q2)(s, a) - V(s), (B,) detached; normalise with denoise_ppo.normalize_advantage."""
    return (q_min - v).detach()


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float = 0.005) -> None:
    """Polyak: target <- (1 - tau) target + tau source (code: tau 0.005 every 2 critic steps)."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s, tau)


def warm_start_value(iql_value: ValueNet, online_value: ValueNet | None = None) -> ValueNet:
    """Online V initialised from the offline IQL V (rl100.md §5). Without `online_value` a deep copy is returned;
    with one, the weights are copied in and a shape mismatch fails naming the parameter."""
    if online_value is None:
        return copy.deepcopy(iql_value)
    src, dst = iql_value.state_dict(), online_value.state_dict()
    bad = [f"{k}: {tuple(src[k].shape)} vs {tuple(dst[k].shape)}" for k in src
           if k in dst and src[k].shape != dst[k].shape]
    missing = sorted(set(src) ^ set(dst))
    if bad or missing:
        raise ValueError(f"warm_start_value: IQL V and online V differ (shape {bad}, keys {missing})")
    online_value.load_state_dict(src)
    return online_value


def clipped_value_loss(v_new: torch.Tensor, v_old: torch.Tensor, v_target: torch.Tensor,
                       clip_eps: float | None = 0.2) -> torch.Tensor:
    """Online PPO value loss (rl100.md §5, code: value clipping with the policy's eps): (B,) each ->
    0.5 * mean max((V - V^)^2, (V_old + clip(V - V_old, -eps, eps) - V^)^2); clip_eps None = plain 0.5 MSE.
    The stage multiplies it by lambda_V (spec §13: not given; DPPO uses vf_coef 0.5)."""
    v_target, v_old = v_target.detach(), v_old.detach()
    loss = (v_new - v_target) ** 2
    if clip_eps is not None:
        v_clip = v_old + (v_new - v_old).clamp(-clip_eps, clip_eps)
        loss = torch.maximum(loss, (v_clip - v_target) ** 2)
    return 0.5 * loss.mean()


# ------------------------------------------------------------------------------------------ on disk
# DIR/critics.json       {"feat_dim", "action_size", "hidden", "layer_norm", "gamma", "n_c", "expectile"}
# DIR/q.safetensors      DoubleQ state dict;   DIR/v.safetensors   ValueNet state dict
# Written by `train offline-rl` (RUN_DIR/critics/); `train online-rl` warm-starts its V from it (rl100.md §5).
CRITICS_META = "critics.json"


def save_iql_critics(path, q: DoubleQ, v: ValueNet, meta: dict) -> None:
    """Both critics + the shape/discount facts needed to rebuild them (meta must hold feat_dim, action_size,
    hidden, layer_norm; gamma, n_c, expectile are recorded for the reader)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    need = {"feat_dim", "action_size", "hidden", "layer_norm"}
    if need - set(meta):
        raise ValueError(f"save_iql_critics: meta lacks {sorted(need - set(meta))}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: t.detach().contiguous().clone() for k, t in q.state_dict().items()}, str(path / "q.safetensors"))
    save_file({k: t.detach().contiguous().clone() for k, t in v.state_dict().items()}, str(path / "v.safetensors"))
    (path / CRITICS_META).write_text(json.dumps(meta, indent=2))


def load_iql_critics(path) -> tuple[DoubleQ, ValueNet, dict]:
    """-> (DoubleQ, ValueNet, meta) from a save_iql_critics dir; a missing file or a shape mismatch fails naming it."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(path)
    meta_file = path / CRITICS_META
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file}: not an IQL critics dir (written by `robotstack train offline-rl`)")
    meta = json.loads(meta_file.read_text())
    hidden, ln = tuple(meta["hidden"]), bool(meta["layer_norm"])
    q = DoubleQ(int(meta["feat_dim"]), int(meta["action_size"]), hidden, ln)
    v = ValueNet(int(meta["feat_dim"]), hidden, ln)
    for name, net in (("q.safetensors", q), ("v.safetensors", v)):
        try:
            net.load_state_dict(load_file(str(path / name)), strict=True)
        except (RuntimeError, FileNotFoundError) as e:
            raise ValueError(f"{path / name}: does not match {meta_file} ({e})") from e
    return q, v, meta
