"""Thin torch Dataset over SequenceSampler (the only torch import in robotstack/data).

Glossary: T horizon, To observation history, Ta executed actions.

Items are dicts key -> tensor (T, ...) (or (To, ...) for observation keys), dtypes as stored (images stay
uint8 HxWx3): normalization and layout changes belong to the policy, which carries its own normalizer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from robotstack.core import keys as K
from robotstack.core.errors import StoreError
from robotstack.data.sampler import SequenceSampler, policy_padding, split_episodes
from robotstack.data.store import EpisodeStore


class WindowDataset(torch.utils.data.Dataset):
    def __init__(self, sampler: SequenceSampler) -> None:
        self.sampler = sampler

    @classmethod
    def from_store(cls, path: str | os.PathLike, horizon: int, n_obs_steps: int,
                   obs_keys: Sequence[str], action_keys: Sequence[str] = (K.ACTION,), val_ratio: float = 0.0,
                   split_seed: int = 0, split: str = "train") -> WindowDataset:
        """Load `obs_keys + action_keys` of a store into RAM and window them (`policy_padding`: every frame is
        the current frame of one window).
        Observation keys return only the first To frames; split selects the seeded episode-level split."""
        if split not in ("train", "val"):
            raise StoreError(f"split={split!r}, expected 'train' or 'val'")
        with EpisodeStore.open(path) as store:
            data = store.load([*obs_keys, *action_keys])
            ends = store.episode_ends
        train, val = split_episodes(len(ends), val_ratio, split_seed)
        sampler = SequenceSampler(data, ends, horizon, **policy_padding(horizon, n_obs_steps),
                                  key_horizons={k: n_obs_steps for k in obs_keys},
                                  episode_mask=train if split == "train" else val)
        return cls(sampler)

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.sampler.sample_sequence(i).items()}
