"""Derived observation features: fixed, parameter-free functions of the raw low-dim observation keys, computed
inside the policy (before normalization), so they travel with the checkpoint and the exported ONNX graph while
the store, the env and the arm server keep their keys.

    policy.obs_features: [object_goal_frame]

Each feature becomes one more low-dim input `feature_<name>` of the state encoder, normalized like the obs keys
(its stats are fitted from the raw training arrays). The raw keys stay inputs too: a feature adds, never hides.

object_goal_frame (push-like tasks; needs robot_eef_pos, object_state, goal, and reads robot_eef_quat when it is
observed), 8 dims + 2 with the hand quaternion: the TCP and the first object seen from the frame whose x axis
points from the object to the goal (xy):
    [along, lateral, height]  TCP minus object, in that frame (m)
    dist                      object-to-goal distance in xy (m)
    dir_x, dir_y              the frame's x axis in world xy (unit)
    cos 4a, sin 4a            a = object yaw minus the frame's heading: a cube looks the same every 90 deg
    cos 2b, sin 2b            b = hand yaw minus the frame's heading: the closed finger pair is symmetric by 180 deg
                              (only with robot_eef_quat; Meta-World's observation has no hand orientation)
Why: a line pusher's action is nearly linear in these (push along x, correct the lateral offset, slow down with
dist), while from world coordinates a network must learn a product of positions and directions precisely to the
centimetre; and the cube's quaternion, which it would otherwise have to read its yaw from, is not symmetric.
Only arithmetic and sqrt (no atan2), so the graph exports to ONNX as is.
Caveat: the object yaw is read as robotstack's (w, x, y, z). Meta-World's object_state passes on Meta-World's own
object quaternion, scipy's (x, y, z, w), for which these two dims only follow the frame's heading; mw:push's puck
is round, so nothing is lost there, but a Meta-World task whose object yaw matters would need the order fixed first.

Glossary: tensors are (..., D) with any leading dims (N, or B x To); object_state is pos(3) + quat(4) per object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
import torch

from robotstack.core import keys as K

FEATURE_PREFIX = "feature_"
_EPS = 1e-9


def _heading(c: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.sqrt(c * c + s * s + _EPS)
    return c / r, s / r


def _yaw_cos_sin(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 4) wxyz quaternion -> (cos, sin) of its yaw (robotstack.core.rotations.quat_yaw, without atan2)."""
    w, x, y, z = q.unbind(-1)
    return _heading(1 - 2 * (y * y + z * z), 2 * (w * z + x * y))


def _times(c: torch.Tensor, s: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos n a, sin n a) from (cos a, sin a) by repeated angle addition."""
    cn, sn = c, s
    for _ in range(n - 1):
        cn, sn = cn * c - sn * s, sn * c + cn * s
    return cn, sn


def object_goal_frame(obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    tcp, obj, goal = obs[K.EEF_POS], obs[K.OBJECT_STATE], obs[K.GOAL]
    obj_pos, obj_q = obj[..., 0:3], obj[..., 3:7]
    gx, gy = goal[..., 0] - obj_pos[..., 0], goal[..., 1] - obj_pos[..., 1]
    dist = torch.sqrt(gx * gx + gy * gy + _EPS)
    dx, dy = gx / dist, gy / dist
    rel = tcp - obj_pos
    along, lateral = rel[..., 0] * dx + rel[..., 1] * dy, -rel[..., 0] * dy + rel[..., 1] * dx

    def relative(c: torch.Tensor, s: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        rc, rs = c * dx + s * dy, s * dx - c * dy  # angle minus the frame's heading
        return _times(rc, rs, n)

    parts = [along, lateral, rel[..., 2], dist, dx, dy, *relative(*_yaw_cos_sin(obj_q), 4)]
    if K.EEF_QUAT in obs:
        parts += relative(*_yaw_cos_sin(obs[K.EEF_QUAT]), 2)
    return torch.stack(parts, dim=-1)


class Feature(NamedTuple):
    fn: Callable[[Mapping[str, torch.Tensor]], torch.Tensor]
    needs: tuple[str, ...]  # raw keys it must have
    optional: tuple[str, ...]  # raw keys it reads when observed
    width: Callable[[set[str]], int]  # output width given the keys it reads


FEATURES = {"object_goal_frame": Feature(object_goal_frame, (K.EEF_POS, K.OBJECT_STATE, K.GOAL), (K.EEF_QUAT,),
                                         lambda read: 10 if K.EEF_QUAT in read else 8)}


def _reads(name: str, low_dim_keys: list[str]) -> list[str]:
    f = FEATURES[name]
    return [*f.needs, *(k for k in f.optional if k in low_dim_keys)]


def feature_key(name: str) -> str:
    return FEATURE_PREFIX + name


def check_features(names: list[str], low_dim_keys: list[str]) -> str | None:
    """None when every name is known and its raw keys are observed, else the problem in words."""
    for name in names:
        if name not in FEATURES:
            return f"unknown feature {name!r}; known: {sorted(FEATURES)}"
        missing = [k for k in FEATURES[name].needs if k not in low_dim_keys]
        if missing:
            return f"feature {name!r} reads the obs keys {missing}, which are not in obs_shapes"
    return None


def feature_shapes(names: list[str], low_dim_keys: list[str]) -> dict[str, tuple[int, ...]]:
    return {feature_key(n): (FEATURES[n].width(set(_reads(n, low_dim_keys))),) for n in names}


def compute(names: list[str], obs: Mapping[str, torch.Tensor], low_dim_keys: list[str],
            dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """{feature_<name>: (..., D)} from raw env-unit obs tensors (..., D_key) of a policy observing low_dim_keys."""
    return {feature_key(n): FEATURES[n].fn({k: obs[k].to(dtype) for k in _reads(n, low_dim_keys)}) for n in names}


def fit_arrays(config, data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays a policy normalizer is fitted on: `data` (raw obs keys (N, D) and the action) plus the config's
    derived features computed from it in float64."""
    raw = {k: torch.as_tensor(np.asarray(data[k])) for k in config.low_dim_keys if k in data}
    with torch.no_grad():
        feats = compute(config.obs_features, raw, config.low_dim_keys, dtype=torch.float64)
    return dict(data) | {k: v.numpy() for k, v in feats.items()}


def encoder_inputs(normalizer, config, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Raw env-unit obs (B, To, ...) -> the state encoder's inputs: every low-dim key and derived feature
    normalized, camera keys passed through (the one place the diffusion, consistency and BC models share)."""
    state = ({k: obs[k].to(torch.float32) for k in config.low_dim_keys}
             | compute(config.obs_features, obs, config.low_dim_keys))
    normed = {k: normalizer.normalize(k, v) for k, v in state.items()}
    return normed | {k: obs[k] for k in config.image_keys}
