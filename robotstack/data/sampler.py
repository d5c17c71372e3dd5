"""Window sampler over in-RAM episodes, like diffusion_policy's SequenceSampler (common/sampler.py).

Glossary: N frames (all episodes concatenated), E episodes, M windows, B batch, T horizon (window length),
To observation history, Ta executed actions.

A window of T frames may start up to pad_before frames before its episode and end up to pad_after frames
after it; the frames outside the episode repeat its first / last frame (edge padding, as diffusion_policy's
pad_before / pad_after). Windows never cross an episode boundary.

Policy training windows use `policy_padding(T, To)`: pad_before = To - 1 and pad_after = T - To, so every frame
of every episode is the "current" frame (index To - 1) of exactly one window. diffusion_policy pads after by
Ta - 1 only, which leaves the last T - To - Ta + 1 frames (3 with T=8, To=2, Ta=4) never current: episodes end on
success, so the final "release now" frame was never trained at the executed index. Past the end the window
repeats the last frame's action and observation ("hold the last action").

Work on `EpisodeStore.load()` output: random zarr reads cost ~1 ms each, a numpy gather microseconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from robotstack.core.errors import StoreError


def split_episodes(n_episodes: int, val_ratio: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Episode-level train/val masks, (E,) bool each; a seeded random choice of round(E * val_ratio) episodes
    (at least 1, and at least 1 left for training) goes to validation, as diffusion_policy's get_val_mask."""
    if not 0.0 <= val_ratio < 1.0:
        raise StoreError(f"val_ratio={val_ratio!r}: expected 0 <= val_ratio < 1")
    val = np.zeros(n_episodes, dtype=bool)
    if val_ratio > 0 and n_episodes > 1:
        n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
        val[np.random.default_rng(seed).choice(n_episodes, size=n_val, replace=False)] = True
    return ~val, val


def policy_padding(horizon: int, n_obs_steps: int) -> dict[str, int]:
    """pad_before / pad_after for policy windows (T = horizon, To = n_obs_steps): every frame of every episode is
    the current frame (index To - 1) of one window, the first with its observation history edge-padded, the last
    with T - To repeated frames after it."""
    if not 1 <= n_obs_steps <= horizon:
        raise StoreError(f"n_obs_steps={n_obs_steps!r}: expected 1 <= n_obs_steps <= horizon={horizon}")
    return {"pad_before": n_obs_steps - 1, "pad_after": horizon - n_obs_steps}


def window_starts(episode_ends: np.ndarray, horizon: int, pad_before: int = 0, pad_after: int = 0,
                  episode_mask: np.ndarray | None = None) -> np.ndarray:
    """(M, 3) int64 rows [episode_start, episode_end, window_start]; window_start may lie before the episode
    (by up to pad_before) and the window may run past its end (by up to pad_after)."""
    ends = np.asarray(episode_ends, dtype=np.int64)
    if horizon < 1:
        raise StoreError(f"horizon={horizon!r}: expected >= 1")
    if ends.ndim != 1 or (len(ends) and (np.any(np.diff(ends) <= 0) or ends[0] <= 0)):
        raise StoreError(f"episode_ends={ends!r}: expected a 1-D strictly increasing array of positive ends")
    if episode_mask is None:
        episode_mask = np.ones(len(ends), dtype=bool)
    episode_mask = np.asarray(episode_mask, dtype=bool)
    if episode_mask.shape != ends.shape:
        raise StoreError(f"episode_mask has shape {episode_mask.shape}, expected {ends.shape}")
    pad_before = min(max(pad_before, 0), horizon - 1)  # same clamping as diffusion_policy's create_indices
    pad_after = min(max(pad_after, 0), horizon - 1)
    starts = np.concatenate([[0], ends[:-1]])
    rows = []
    for s, e, keep in zip(starts, ends, episode_mask):
        if not keep:
            continue
        first, last = s - pad_before, e - horizon + pad_after  # inclusive range of window starts
        if last < first:
            continue  # episode shorter than the unpadded part of a window
        w = np.arange(first, last + 1, dtype=np.int64)
        rows.append(np.stack([np.full_like(w, s), np.full_like(w, e), w], axis=1))
    return np.concatenate(rows) if rows else np.zeros((0, 3), dtype=np.int64)


class SequenceSampler:
    """Windows of `horizon` frames from in-RAM arrays with edge padding at episode boundaries.

    key_horizons: optional per-key window length (e.g. To for observation keys): only the first To frames of
    the window are gathered and returned, shape (To, ...) instead of (T, ...). (diffusion_policy returns
    T frames with NaN after the first To; returning To frames saves the copy and the NaN trap.)
    """

    def __init__(self, data: Mapping[str, np.ndarray], episode_ends: np.ndarray, horizon: int,
                 pad_before: int = 0, pad_after: int = 0, keys: Sequence[str] | None = None,
                 key_horizons: Mapping[str, int] | None = None, episode_mask: np.ndarray | None = None) -> None:
        keys = list(data) if keys is None else list(keys)
        unknown = [k for k in keys if k not in data]
        if unknown:
            raise StoreError(f"SequenceSampler: unknown key(s) {unknown}; data has {sorted(data)}")
        ends = np.asarray(episode_ends, dtype=np.int64)
        n = int(ends[-1]) if len(ends) else 0
        short = {k: len(data[k]) for k in keys if len(data[k]) < n}
        if short:
            raise StoreError(f"SequenceSampler: arrays shorter than episode_ends[-1]={n}: {short}")
        key_horizons = dict(key_horizons or {})
        bad = {k: h for k, h in key_horizons.items() if k not in keys or not 1 <= h <= horizon}
        if bad:
            raise StoreError(f"SequenceSampler: key_horizons {bad}: expected keys among {keys} and "
                             f"1 <= value <= horizon={horizon}")
        self.data = {k: data[k] for k in keys}
        self.horizon = horizon
        self.key_horizons = {k: key_horizons.get(k, horizon) for k in keys}
        self.indices = window_starts(ends, horizon, pad_before, pad_after, episode_mask)

    def __len__(self) -> int:
        return len(self.indices)

    def frame_indices(self, idx: np.ndarray | int, length: int | None = None) -> np.ndarray:
        """(B, length) buffer indices of windows idx, clipped into their episode (= edge padding)."""
        rows = self.indices[np.atleast_1d(idx)]
        t = np.arange(self.horizon if length is None else length, dtype=np.int64)
        return np.clip(rows[:, 2:3] + t, rows[:, 0:1], rows[:, 1:2] - 1)

    def sample_batch(self, idx: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """key -> (B, T or To, ...) for windows idx."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise StoreError(f"SequenceSampler: window index out of range [0, {len(self)})")
        full = self.frame_indices(idx)
        return {k: self.data[k][full[:, :h]] for k, h in self.key_horizons.items()}

    def sample_sequence(self, i: int) -> dict[str, np.ndarray]:
        """key -> (T or To, ...) for window i."""
        return {k: v[0] for k, v in self.sample_batch([i]).items()}
