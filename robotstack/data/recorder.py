"""EpisodeRecorder: buffers one episode in RAM, stamps measured vs nominal time per frame, appends on save.

Glossary: T frames in the episode, Da action dim.

Each frame gets (robotstack.core.keys):
  timestamp    () float64  nominal grid time: step_index / control_hz (diffusion_policy's key)
  capture_time () float64  measured time.monotonic() since begin() (or the caller's own measurement)
  late_tick    () bool     capture_time - timestamp > late_tolerance (default half a control period)
Frame indices are never turned into timestamps silently: both times are stored so a reader can see jitter.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from robotstack.core import keys as K
from robotstack.core.errors import StoreError
from robotstack.data.store import EpisodeMeta, EpisodeStore

_STEP_DTYPES = {
    K.REWARD: np.float32,
    K.TERMINATED: np.bool_,
    K.TRUNCATED: np.bool_,
    K.INTERVENTION: np.bool_,
    K.TIMESTAMP: np.float64,
    K.CAPTURE_TIME: np.float64,
    K.LATE_TICK: np.bool_,
}


class EpisodeRecorder:
    """Record episodes into `store` at a nominal `control_hz`.

    rec.begin(source="human", task="push", seed=3)          # or begin({"source": ..., ...})
    rec.add(obs, action, reward, terminated, truncated)     # once per control tick
    idx = rec.save(success=True)                            # or rec.discard()
    """

    def __init__(self, store: EpisodeStore, control_hz: float, late_tolerance: float | None = None) -> None:
        if control_hz <= 0:
            raise StoreError(f"EpisodeRecorder: control_hz={control_hz!r}, expected > 0")
        self.store = store
        self.control_hz = float(control_hz)
        self.period = 1.0 / self.control_hz
        self.late_tolerance = 0.5 * self.period if late_tolerance is None else float(late_tolerance)
        self._meta: dict[str, Any] | None = None
        self._t0 = 0.0
        self._obs: dict[str, list[np.ndarray]] = {}
        self._obs_keys: tuple[str, ...] | None = None
        self._steps: dict[str, list[Any]] = {}

    @property
    def recording(self) -> bool:
        return self._meta is not None

    @property
    def n_frames(self) -> int:
        return len(self._steps.get(K.ACTION, []))

    def begin(self, meta_fields: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """Start an episode. Fields: source (keys.SOURCES), task, seed, policy_id=''. The clock starts here."""
        if self.recording:
            raise StoreError("EpisodeRecorder.begin: an episode is already being recorded; save() or discard() it")
        merged = {**(meta_fields or {}), **fields}
        allowed = {"source", "task", "seed", "policy_id"}
        unknown = sorted(set(merged) - allowed)
        if unknown:
            raise StoreError(f"EpisodeRecorder.begin: unknown meta field(s) {unknown}; expected {sorted(allowed)}")
        missing = sorted({"source", "task", "seed"} - set(merged))
        if missing:
            raise StoreError(f"EpisodeRecorder.begin: missing meta field(s) {missing}")
        # validate now, not at save time, so a typo fails before the operator records a whole episode
        EpisodeMeta(merged["source"], merged["task"], merged["seed"], None, merged.get("policy_id", ""))
        self._meta = merged
        self._obs, self._obs_keys = {}, None
        self._steps = {k: [] for k in (K.ACTION, *_STEP_DTYPES)}
        self._t0 = time.monotonic()

    def add(self, obs: Mapping[str, Any], action: Any, reward: float, terminated: bool, truncated: bool,
            intervention: bool = False, capture_time: float | None = None,
            nominal_time: float | None = None) -> None:
        """Buffer one frame. capture_time: seconds since begin() (measured now when None). nominal_time:
        the grid time of this tick (step_index / control_hz when None; pass it when the loop skipped slots)."""
        if not self.recording:
            raise StoreError("EpisodeRecorder.add: no episode started; call begin() first")
        if capture_time is None:
            capture_time = time.monotonic() - self._t0
        if self._obs_keys is None:
            clash = sorted(set(obs) & (set(_STEP_DTYPES) | {K.ACTION}))
            if clash:
                raise StoreError(f"EpisodeRecorder.add: observation keys {clash} clash with per-step keys")
            self._obs_keys = tuple(obs)
            self._obs = {k: [] for k in obs}
        elif set(obs) != set(self._obs_keys):
            raise StoreError(f"EpisodeRecorder.add: frame {self.n_frames} has obs keys {sorted(obs)}, expected "
                             f"{sorted(self._obs_keys)} (as in frame 0)")
        for k, v in obs.items():
            self._obs[k].append(np.array(v, copy=True))  # copy: envs and drivers reuse their buffers
        nominal = self.n_frames * self.period if nominal_time is None else float(nominal_time)
        s = self._steps
        s[K.ACTION].append(np.array(action, dtype=np.float32, copy=True))
        s[K.REWARD].append(reward)
        s[K.TERMINATED].append(terminated)
        s[K.TRUNCATED].append(truncated)
        s[K.INTERVENTION].append(intervention)
        s[K.TIMESTAMP].append(nominal)
        s[K.CAPTURE_TIME].append(capture_time)
        s[K.LATE_TICK].append(capture_time - nominal > self.late_tolerance)

    def frames(self) -> dict[str, np.ndarray]:
        """The buffered episode as key -> (T, ...) arrays."""
        out = {}
        for k, vals in self._obs.items():
            try:
                out[k] = np.stack(vals)
            except ValueError as e:
                shapes = sorted({v.shape for v in vals})
                raise StoreError(f"EpisodeRecorder: obs key {k!r} changed shape within the episode: {shapes}") from e
        try:
            out[K.ACTION] = np.stack(self._steps[K.ACTION])
        except ValueError as e:
            shapes = sorted({v.shape for v in self._steps[K.ACTION]})
            raise StoreError(f"EpisodeRecorder: action changed shape within the episode: {shapes}") from e
        for k, dt in _STEP_DTYPES.items():
            out[k] = np.asarray(self._steps[k], dtype=dt)
        return out

    def save(self, success: bool) -> int:
        """Append the buffered episode to the store (atomic); returns its episode index."""
        if not self.recording:
            raise StoreError("EpisodeRecorder.save: no episode started; call begin() first")
        if self.n_frames == 0:
            raise StoreError("EpisodeRecorder.save: the episode has no frames; add() at least one or discard()")
        frames = self.frames()
        m = self._meta
        meta = EpisodeMeta(source=m["source"], task=m["task"], seed=m["seed"], success=success,
                           policy_id=m.get("policy_id", ""), n_late_ticks=int(frames[K.LATE_TICK].sum()))
        index = self.store.append_episode(frames, meta)
        self.discard()
        return index

    def discard(self) -> None:
        """Drop the buffered episode (nothing is written)."""
        self._meta = None
        self._obs, self._obs_keys = {}, None
        self._steps = {}
