"""Per-key normalizer whose statistics live in the module's state dict.

Why a module with buffers: the stats then travel with the weights (checkpoint, EMA copy, ONNX graph), so a
policy can never be run with the stats of another dataset or none at all (design.md §5.4). Stats that were
never fitted fail loudly on first use instead of silently passing raw values through.

Modes (per key):
- "minmax":   x -> [-1, 1] per feature dim; a (near-)constant dim maps its value to 0 (scale 1).
- "meanstd":  x -> (x - mean) / std, std floored at `std_eps`.
- "identity": x unchanged (still counts as fitted).

Glossary: N samples, F feature shape of one key (e.g. (Da,) or (Dq,)); tensors are (..., *F).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from robotstack.core.errors import RobotstackError

MODES = ("minmax", "meanstd", "identity")


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class MissingStatsError(RobotstackError):
    """A normalizer key was used before its statistics were fitted or loaded."""


class _KeyStats(nn.Module):
    """normalized = x * scale + offset; `fitted` is saved so a loaded-but-unfitted key still fails."""

    def __init__(self, shape: tuple[int, ...], mode: str):
        super().__init__()
        self.mode = mode
        self.shape = tuple(shape)
        self.register_buffer("scale", torch.ones(self.shape))
        self.register_buffer("offset", torch.zeros(self.shape))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))


class Normalizer(nn.Module):
    """`normalize(key, x)` / `unnormalize(key, x)` for x of shape (..., *F) with F = the key's shape."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], modes: Mapping[str, str],
                 range_eps: float = 1e-4, std_eps: float = 1e-6):
        super().__init__()
        missing = set(shapes) - set(modes)
        if missing:
            raise ValueError(f"Normalizer: no mode given for keys {sorted(missing)}; expected one of {MODES}")
        self.range_eps = range_eps
        self.std_eps = std_eps
        self.stats = nn.ModuleDict()
        for key, shape in shapes.items():
            if "." in key:
                raise ValueError(f"Normalizer key {key!r} must not contain '.' (state-dict separator)")
            if modes[key] not in MODES:
                raise ValueError(f"Normalizer key {key!r}: mode {modes[key]!r} is not one of {MODES}")
            self.stats[key] = _KeyStats(tuple(shape), modes[key])

    # ------------------------------------------------------------------ fitting
    def fit(self, data: Mapping[str, np.ndarray]) -> None:
        """Fit every key present in `data` from an array of shape (N, *F) (any leading dims are reduced)."""
        for key, arr in data.items():
            self.fit_key(key, arr)

    def fit_all(self, data: Mapping[str, np.ndarray]) -> None:
        """Fit every key this normalizer holds from `data` (extra keys are ignored); a missing key fails by name."""
        missing = [k for k in self.keys() if k not in data]
        if missing:
            raise KeyError(f"fit_normalizer: no data for keys {missing}")
        self.fit({k: data[k] for k in self.keys()})

    def fit_key(self, key: str, arr: np.ndarray) -> None:
        st = self._entry(key)
        x = np.asarray(arr, dtype=np.float64)
        n = len(st.shape)
        if x.ndim < n + 1 or x.shape[x.ndim - n:] != st.shape:
            raise ValueError(f"Normalizer.fit: key {key!r} expects data shaped (N, *{st.shape}), got {x.shape}")
        x = x.reshape(-1, *st.shape)
        if x.shape[0] == 0:
            raise ValueError(f"Normalizer.fit: key {key!r} got no samples")
        if not np.isfinite(x).all():
            raise ValueError(f"Normalizer.fit: key {key!r} contains NaN or inf")
        if st.mode == "minmax":
            lo, hi = x.min(axis=0), x.max(axis=0)
            rng = hi - lo
            const = rng < self.range_eps
            scale = np.where(const, 1.0, 2.0 / np.where(const, 1.0, rng))
            offset = np.where(const, -(hi + lo) / 2.0, -1.0 - lo * scale)
        elif st.mode == "meanstd":
            mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), self.std_eps)
            scale, offset = 1.0 / std, -mean / std
        else:
            scale, offset = np.ones(st.shape), np.zeros(st.shape)
        self._set(st, scale, offset)

    def set_stats(self, key: str, *, scale: np.ndarray, offset: np.ndarray) -> None:
        """Set the affine map directly (e.g. from a manifest)."""
        self._set(self._entry(key), scale, offset)

    @staticmethod
    def _set(st: _KeyStats, scale: np.ndarray, offset: np.ndarray) -> None:
        with torch.no_grad():
            for buf, val in ((st.scale, scale), (st.offset, offset)):
                arr = np.array(np.broadcast_to(np.asarray(val, dtype=np.float64), st.shape))  # writable copy
                buf.copy_(torch.from_numpy(arr).to(buf.dtype))
            st.fitted.fill_(True)

    # ------------------------------------------------------------------ use
    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        st = self._ready(key)
        return x * st.scale + st.offset

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        st = self._ready(key)
        return (x - st.offset) / st.scale

    def keys(self) -> list[str]:
        return list(self.stats.keys())

    def is_fitted(self, key: str | None = None) -> bool:
        keys = [key] if key is not None else self.keys()
        return all(bool(self._entry(k).fitted) for k in keys)

    def stats_dict(self) -> dict[str, dict[str, object]]:
        """Plain-python view (mode, scale, offset) for manifests and logs."""
        return {k: {"mode": st.mode, "scale": st.scale.tolist(), "offset": st.offset.tolist(),
                    "fitted": bool(st.fitted)} for k, st in self.stats.items()}

    def _entry(self, key: str) -> _KeyStats:
        if key not in self.stats:
            raise KeyError(f"Normalizer has no key {key!r}; known keys: {self.keys()}")
        return self.stats[key]

    def _ready(self, key: str) -> _KeyStats:
        st = self._entry(key)
        # The check reads a tensor, so it is skipped while tracing/exporting (the exporter checks is_fitted()).
        if not _tracing() and not bool(st.fitted):
            raise MissingStatsError(
                f"normalizer stats for key {key!r} are missing: call policy.fit_normalizer(...) on the training "
                f"data or load a checkpoint that contains them")
        return st


def policy_normalizer(config) -> Normalizer:
    """The normalizer of a policy built on a DiffusionPolicyConfig (diffusion, consistency and MLP-BC policies):
    the state-encoder inputs (low-dim obs keys and derived features) in `obs_norm`, the action in `action_norm`,
    meanstd's std floored at `obs_std_floor`."""
    modes = {k: config.obs_norm for k in config.state_shapes} | {"action": config.action_norm}
    shapes = dict(config.state_shapes) | {"action": (config.action_dim,)}
    return Normalizer(shapes, modes, std_eps=config.obs_std_floor)
