"""Chunk sampler for chunked critics (QC / DQC / n-step / one-step, ALOE evaluation, RL-100's IQL critic).

Glossary: N frames (all episodes concatenated), E episodes, B batch, To observation history, h critic chunk,
h' effective chunk length (<= h), Da action dim.

Store semantics (robotstack.data.recorder): frame j holds (obs_j, action_j, reward_j, terminated_j, truncated_j),
where reward / terminated / truncated are the *consequences* of action_j. The observation after an episode's last
action is not stored. Hence, for a start frame t and chunk length h, walking k = 0..h-1 over frame j = t + k:

  * terminated_j            -> the chunk ends after this action: h' = k + 1, done = True (no bootstrap; the next
                               observation is irrelevant and is returned clipped to the episode's last frame).
  * truncated_j, or j is the episode's last frame (and not terminated)
                            -> the successor of frame j is unknown, so the chunk is cut *before* this action:
                               h' = k, bootstrap from obs_j (done = False). Choice: the reward of such a final
                               non-terminal frame is never used (no successor to bootstrap from); a start t whose
                               h' would be 0 is not a sample (excluded from `starts`).
  * otherwise h' = h and s_{t+h} lies inside the episode.

    reward_sum = sum_{k<h'} gamma^k r_{t+k}      discount = gamma^{h'}      valid[k] = k < h'
    complete   = (h' == h) or done               (the chunk's value is fixed by the data: QC/DQC chunk critics
                                                  train only on complete chunks, QC's `valid[h-1]` weight)
Actions past h' are padded by repeating the last in-episode action (QC clips indices at the episode end);
`valid` says which ones were executed. Observation windows (To frames ending at t, resp. t + h') are edge-padded
at the episode start, as the policy window sampler does.

Works on plain arrays (data dict + episode_ends) or on an EpisodeStore (`ChunkSampler.from_store`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from robotstack.core import keys as K
from robotstack.core.errors import StoreError


@dataclass(frozen=True)
class ChunkBatch:
    """One batch of chunks; every array has the batch B first."""

    index: np.ndarray  # (B,) int64 start frame t (index into the concatenated store)
    obs: dict[str, np.ndarray]  # key -> (B, To, ...) window ending at t
    actions: np.ndarray  # (B, h, Da) a_{t:t+h}, padded past h' with the last in-episode action
    valid: np.ndarray  # (B, h) bool: action k was executed within the chunk (k < h')
    reward_sum: np.ndarray  # (B,) float64 sum_{k<h'} gamma^k r_{t+k}
    h_eff: np.ndarray  # (B,) int64 h'
    discount: np.ndarray  # (B,) float64 gamma^{h'}
    next_obs: dict[str, np.ndarray]  # key -> (B, To, ...) window ending at t + h' (clipped into the episode)
    done: np.ndarray  # (B,) bool: terminated inside the chunk (truncation is not done)
    complete: np.ndarray  # (B,) bool: h' == h or done
    source: np.ndarray  # (B,) int code into `source_names` (-1 unknown)
    intervention: np.ndarray  # (B, h) bool per executed step (False where not valid)

    @property
    def any_intervention(self) -> np.ndarray:
        """(B,) bool: a human overrode at least one executed action of the chunk."""
        return self.intervention.any(axis=1)


def _flag(data: Mapping[str, np.ndarray], key: str | None, n: int) -> np.ndarray:
    # Choice: a missing terminated / truncated / intervention key reads as all-False (demos recorded without
    # them); a missing reward key is an error (a critic without rewards is meaningless).
    if key is None or key not in data:
        return np.zeros(n, dtype=bool)
    return np.asarray(data[key][:n]).astype(bool).reshape(n)


class ChunkSampler:
    """Chunks of `horizon` actions from in-RAM episodes (see the module docstring for the exact rules)."""

    def __init__(self, data: Mapping[str, np.ndarray], episode_ends: np.ndarray, horizon: int, gamma: float,
                 obs_keys: Sequence[str], n_obs_steps: int = 1, action_key: str = K.ACTION,
                 reward_key: str = K.REWARD, terminated_key: str | None = K.TERMINATED,
                 truncated_key: str | None = K.TRUNCATED, intervention_key: str | None = K.INTERVENTION,
                 episode_source: np.ndarray | None = None, source_names: Sequence[str] = K.SOURCES,
                 episode_mask: np.ndarray | None = None, complete_only: bool = False) -> None:
        if horizon < 1:
            raise StoreError(f"ChunkSampler: horizon={horizon!r}, expected >= 1")
        if not 0.0 < gamma <= 1.0:
            raise StoreError(f"ChunkSampler: gamma={gamma!r}, expected 0 < gamma <= 1")
        if n_obs_steps < 1:
            raise StoreError(f"ChunkSampler: n_obs_steps={n_obs_steps!r}, expected >= 1")
        ends = np.asarray(episode_ends, dtype=np.int64)
        if ends.ndim != 1 or len(ends) == 0 or ends[0] <= 0 or np.any(np.diff(ends) <= 0):
            raise StoreError(f"ChunkSampler: episode_ends={ends!r}: expected a non-empty 1-D strictly increasing "
                             "array of positive ends")
        n = int(ends[-1])
        needed = [*obs_keys, action_key, reward_key]
        missing = [k for k in needed if k not in data]
        if missing:
            raise StoreError(f"ChunkSampler: missing key(s) {missing}; data has {sorted(data)}")
        short = {k: len(data[k]) for k in needed if len(data[k]) < n}
        if short:
            raise StoreError(f"ChunkSampler: arrays shorter than episode_ends[-1]={n}: {short}")
        self.horizon, self.gamma, self.n_obs_steps = int(horizon), float(gamma), int(n_obs_steps)
        self.obs = {k: data[k] for k in obs_keys}
        act = np.asarray(data[action_key][:n])
        self.actions = act.reshape(n, -1) if act.ndim == 1 else act
        self.rewards = np.asarray(data[reward_key][:n], dtype=np.float64).reshape(n)
        self.terminated = _flag(data, terminated_key, n)
        truncated = _flag(data, truncated_key, n)
        self.intervention = _flag(data, intervention_key, n)
        starts_of_ep = np.concatenate([[0], ends[:-1]])
        self.episode_ends = ends
        self.episode_of = np.repeat(np.arange(len(ends)), np.diff(np.concatenate([[0], ends])))
        self.ep_start = starts_of_ep[self.episode_of]  # (N,) first frame of each frame's episode
        self.ep_end = ends[self.episode_of]  # (N,) exclusive end
        is_last = np.arange(n) == self.ep_end - 1
        # frame j is a "cut" when its successor observation is unknown; a terminal frame never is
        self.cut = (truncated | is_last) & ~self.terminated
        if episode_source is None:
            episode_source = np.full(len(ends), -1, dtype=np.int64)
        episode_source = np.asarray(episode_source, dtype=np.int64)
        if episode_source.shape != ends.shape:
            raise StoreError(f"ChunkSampler: episode_source has shape {episode_source.shape}, expected {ends.shape}")
        self.source_of_frame = episode_source[self.episode_of]
        self.source_names = list(source_names)
        ok = ~self.cut  # h' >= 1
        if episode_mask is not None:
            episode_mask = np.asarray(episode_mask, dtype=bool)
            if episode_mask.shape != ends.shape:
                raise StoreError(f"ChunkSampler: episode_mask has shape {episode_mask.shape}, expected {ends.shape}")
            ok &= episode_mask[self.episode_of]
        starts = np.flatnonzero(ok).astype(np.int64)
        if complete_only:
            starts = starts[self.batch(starts).complete] if len(starts) else starts
        self.starts = starts  # the frames `sample` draws from

    @classmethod
    def from_store(cls, store, horizon: int, gamma: float, obs_keys: Sequence[str], **kwargs) -> ChunkSampler:
        """Load the needed keys of an EpisodeStore into RAM (random zarr reads are slow) and sample from them.
        Per-episode sources come from meta/source (codes into store.categories('source'))."""
        wanted = [*obs_keys, kwargs.get("action_key", K.ACTION), kwargs.get("reward_key", K.REWARD)]
        for name, default in (("terminated_key", K.TERMINATED), ("truncated_key", K.TRUNCATED),
                              ("intervention_key", K.INTERVENTION)):
            key = kwargs.get(name, default)
            if key is not None and key in store.keys():
                wanted.append(key)
        data = store.load(list(dict.fromkeys(wanted)))
        meta = store.meta_arrays()
        kwargs.setdefault("episode_source", meta.get("source"))
        kwargs.setdefault("source_names", store.categories("source") or K.SOURCES)
        return cls(data, store.episode_ends, horizon, gamma, obs_keys, **kwargs)

    def __len__(self) -> int:
        return len(self.starts)

    def source_code(self, name: str) -> int:
        if name not in self.source_names:
            raise StoreError(f"ChunkSampler: source {name!r} not in {self.source_names}")
        return self.source_names.index(name)

    def sample(self, rng: np.random.Generator, batch_size: int) -> ChunkBatch:
        """A uniform batch (with replacement) over `starts`."""
        if len(self.starts) == 0:
            raise StoreError("ChunkSampler: no valid chunk start in the data")
        return self.batch(self.starts[rng.integers(0, len(self.starts), size=batch_size)])

    def _window(self, end_frames: np.ndarray) -> dict[str, np.ndarray]:
        t = end_frames[:, None] + np.arange(1 - self.n_obs_steps, 1, dtype=np.int64)
        t = np.maximum(t, self.ep_start[end_frames][:, None])
        return {k: np.asarray(v[t]) for k, v in self.obs.items()}

    def batch(self, frames: Sequence[int] | np.ndarray) -> ChunkBatch:
        """The chunks starting at frames t (indices into the concatenated store; any frame whose h' >= 1)."""
        t = np.asarray(frames, dtype=np.int64).reshape(-1)
        n = len(self.rewards)
        if t.size and (t.min() < 0 or t.max() >= n):
            raise StoreError(f"ChunkSampler: start frame out of range [0, {n})")
        if t.size and self.cut[t].any():
            bad = t[self.cut[t]][:5]
            raise StoreError(f"ChunkSampler: frames {bad.tolist()} are truncated / last non-terminal frames: "
                             "their successor is not stored, so no chunk starts there (use `starts`)")
        h = self.horizon
        k = np.arange(h, dtype=np.int64)
        end = self.ep_end[t][:, None]
        j = t[:, None] + k  # (B, h) frames of the chunk
        inside = j < end
        jc = np.minimum(j, end - 1)
        term = self.terminated[jc] & inside
        cut = self.cut[jc] & inside
        # first event: a terminal at k ends after it (k + 1), a cut ends before it (k); none -> h
        ev_len = np.where(term, k + 1, np.where(cut, k, h + 1))
        first = np.argmin(np.where(term | cut, k, h + 1), axis=1)  # index of the first event (0 if none)
        has_event = (term | cut).any(axis=1)
        h_eff = np.where(has_event, ev_len[np.arange(len(t)), first], h).astype(np.int64)
        done = has_event & term[np.arange(len(t)), first]
        valid = k[None, :] < h_eff[:, None]
        disc_k = self.gamma ** k
        reward_sum = (np.where(valid, self.rewards[jc], 0.0) * disc_k).sum(axis=1)
        next_frame = np.minimum(t + h_eff, self.ep_end[t] - 1)
        # pad past h' with the last executed action (never past the episode)
        last_exec = t + np.maximum(h_eff, 1) - 1
        act_idx = np.where(valid, jc, last_exec[:, None])
        return ChunkBatch(
            index=t,
            obs=self._window(t),
            actions=self.actions[act_idx],
            valid=valid,
            reward_sum=reward_sum,
            h_eff=h_eff,
            discount=self.gamma ** h_eff.astype(np.float64),
            next_obs=self._window(next_frame),
            done=done,
            complete=(h_eff == h) | done,
            source=self.source_of_frame[t],
            intervention=self.intervention[jc] & valid,
        )
