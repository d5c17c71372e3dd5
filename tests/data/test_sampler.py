"""Window sampler: same windows as diffusion_policy's SequenceSampler, per-key To, seeded episode split,
every frame the current frame of a training window, and the torch Dataset wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robotstack.core.errors import StoreError
from robotstack.data.dataset import WindowDataset
from robotstack.data.sampler import SequenceSampler, policy_padding, split_episodes, window_starts
from robotstack.data.store import EpisodeMeta, EpisodeStore


def dp_create_indices(episode_ends, sequence_length, pad_before, pad_after):
    """diffusion_policy common/sampler.py create_indices, transcribed as the reference."""
    pad_before = min(max(pad_before, 0), sequence_length - 1)
    pad_after = min(max(pad_after, 0), sequence_length - 1)
    indices = []
    for i in range(len(episode_ends)):
        start_idx = 0 if i == 0 else episode_ends[i - 1]
        end_idx = episode_ends[i]
        episode_length = end_idx - start_idx
        for idx in range(-pad_before, episode_length - sequence_length + pad_after + 1):
            buffer_start_idx = max(idx, 0) + start_idx
            buffer_end_idx = min(idx + sequence_length, episode_length) + start_idx
            start_offset = buffer_start_idx - (idx + start_idx)
            end_offset = (idx + sequence_length + start_idx) - buffer_end_idx
            indices.append([buffer_start_idx, buffer_end_idx, start_offset, sequence_length - end_offset])
    return indices


def dp_sample_sequence(arr, sequence_length, row):
    """diffusion_policy SequenceSampler.sample_sequence (edge padding), transcribed as the reference."""
    b0, b1, s0, s1 = row
    sample = arr[b0:b1]
    data = np.zeros((sequence_length, *arr.shape[1:]), dtype=arr.dtype)
    if s0 > 0:
        data[:s0] = sample[0]
    if s1 < sequence_length:
        data[s1:] = sample[-1]
    data[s0:s1] = sample
    return data


@pytest.mark.parametrize("horizon,pad_before,pad_after", [(16, 1, 7), (4, 0, 0), (10, 9, 9), (3, 5, -1)])
def test_windows_match_diffusion_policy(horizon, pad_before, pad_after):
    ends = np.array([5, 25, 26, 40])
    data = {"x": np.arange(40 * 2, dtype=np.float32).reshape(40, 2), "i": np.arange(40)}
    s = SequenceSampler(data, ends, horizon, pad_before=pad_before, pad_after=pad_after)
    ref = dp_create_indices(ends, horizon, pad_before, pad_after)
    assert len(s) == len(ref)
    batch = s.sample_batch(np.arange(len(s)))
    for j, row in enumerate(ref):
        for k in data:
            assert np.array_equal(batch[k][j], dp_sample_sequence(data[k], horizon, row))
            assert np.array_equal(s.sample_sequence(j)[k], batch[k][j])


def test_edge_padding_repeats_boundary_frames_and_never_crosses_episodes():
    ends = np.array([3, 6])
    s = SequenceSampler({"i": np.arange(6)}, ends, horizon=4, pad_before=1, pad_after=3)
    windows = s.sample_batch(np.arange(len(s)))["i"]
    assert windows[0].tolist() == [0, 0, 1, 2]  # starts one before episode 0: first frame repeated
    assert windows[-1].tolist() == [5, 5, 5, 5]  # last window of episode 1: last frame repeated
    for w in windows:
        assert (w < 3).all() or (w >= 3).all()


def test_per_key_obs_horizon_returns_first_to_frames():
    ends = np.array([10])
    data = {"obs": np.arange(10), "action": np.arange(10) * 10}
    s = SequenceSampler(data, ends, horizon=8, pad_before=1, pad_after=7, key_horizons={"obs": 2})
    b = s.sample_batch([0, 3])
    assert b["obs"].shape == (2, 2) and b["action"].shape == (2, 8)
    assert b["obs"].tolist() == [[0, 0], [2, 3]]
    assert b["action"][1].tolist() == [20, 30, 40, 50, 60, 70, 80, 90]


def current_frames(s: SequenceSampler, n_obs_steps: int) -> list[int]:
    """Buffer index of each window's current frame (index To - 1), via the sampler's own gather."""
    return s.frame_indices(np.arange(len(s)))[:, n_obs_steps - 1].tolist()


@pytest.mark.parametrize("horizon,to,ta", [(8, 2, 4), (16, 2, 8), (4, 1, 1), (3, 3, 1), (10, 2, 8)])
def test_every_frame_is_the_current_frame_of_exactly_one_window(horizon, to, ta):
    """Regression (issue 10 #1): with pad_after = Ta - 1 the last T - To - Ta + 1 frames of each episode (where
    the pick/place experts open the gripper) were never at index To - 1 of any window."""
    ends = np.array([1, 4, 15, 40])  # includes episodes shorter than the horizon
    data = {"i": np.arange(40), "a": np.arange(40) * 10}
    s = SequenceSampler(data, ends, horizon, **policy_padding(horizon, to), key_horizons={"i": to})
    assert sorted(current_frames(s, to)) == list(range(40))
    b = s.sample_batch(np.arange(len(s)))
    last = np.flatnonzero(np.array(current_frames(s, to)) == 39)[0]
    assert b["a"][last].tolist() == [max(390 - 10 * (to - 1 - j), 150) if j < to else 390 for j in range(horizon)]
    for w in b["a"]:  # windows stay inside one episode
        ep = np.searchsorted(ends, w // 10, side="right")
        assert (ep == ep[0]).all()
    with pytest.raises(StoreError, match="n_obs_steps"):
        policy_padding(2, 3)


def test_training_consumers_cover_every_frame(tmp_path):
    """The torch dataset and the distill loader window with policy_padding (train il is covered by its smoke)."""
    from robotstack.train.distill import load_windows

    path = tmp_path / "s.zarr"
    st = EpisodeStore.create(path)
    for i, t in enumerate((5, 9, 12)):
        st.append_episode({"robot_eef_pos": np.full((t, 3), i, np.float32),
                           "action": np.arange(t * 2, dtype=np.float32).reshape(t, 2)},
                          EpisodeMeta("scripted", "reach", i, True))
    ds = WindowDataset.from_store(path, horizon=8, n_obs_steps=2, obs_keys=["robot_eef_pos"])
    assert sorted(current_frames(ds.sampler, 2)) == list(range(26))
    w = load_windows([str(path)], ["robot_eef_pos"], to=2, horizon=8)
    assert sorted(current_frames(w, 2)) == list(range(26))


def test_episode_mask_and_split():
    train, val = split_episodes(10, 0.2, seed=3)
    assert val.sum() == 2 and (train ^ val).all()
    assert np.array_equal(split_episodes(10, 0.2, seed=3)[1], val)  # same seed, same split
    assert split_episodes(1, 0.5)[1].sum() == 0  # never leaves training empty
    ends = np.arange(1, 11) * 5
    rows = window_starts(ends, 2, episode_mask=val)
    episodes = np.searchsorted(ends, rows[:, 0], side="right")
    assert set(episodes.tolist()) == set(np.flatnonzero(val).tolist())
    with pytest.raises(StoreError, match="val_ratio"):
        split_episodes(10, 1.0)


def test_sampler_errors():
    with pytest.raises(StoreError, match=r"unknown key\(s\) \['img'\]"):
        SequenceSampler({"x": np.zeros(5)}, np.array([5]), 2, keys=["img"])
    with pytest.raises(StoreError, match="shorter than episode_ends"):
        SequenceSampler({"x": np.zeros(4)}, np.array([5]), 2)
    with pytest.raises(StoreError, match="strictly increasing"):
        window_starts(np.array([5, 5]), 2)
    with pytest.raises(StoreError, match="key_horizons"):
        SequenceSampler({"x": np.zeros(5)}, np.array([5]), 2, key_horizons={"x": 3})
    s = SequenceSampler({"x": np.zeros(5)}, np.array([5]), 2)
    with pytest.raises(StoreError, match="out of range"):
        s.sample_batch([len(s)])


def test_window_dataset_from_store(tmp_path):
    path = tmp_path / "s.zarr"
    st = EpisodeStore.create(path)
    for i in range(6):
        t = 10 + i
        st.append_episode({"robot_eef_pos": np.full((t, 3), i, np.float32),
                           "image_front": np.full((t, 4, 4, 3), i, np.uint8),
                           "action": np.arange(t * 2, dtype=np.float32).reshape(t, 2)},
                          EpisodeMeta("scripted", "reach", i, True))
    kw = dict(horizon=8, n_obs_steps=2, obs_keys=["robot_eef_pos", "image_front"],
              val_ratio=0.34, split_seed=0)
    train = WindowDataset.from_store(path, **kw)
    val = WindowDataset.from_store(path, split="val", **kw)
    assert len(train) + len(val) == sum(10 + i for i in range(6))  # one window per frame
    item = train[0]
    assert item["robot_eef_pos"].shape == (2, 3) and item["robot_eef_pos"].dtype == torch.float32
    assert item["image_front"].shape == (2, 4, 4, 3) and item["image_front"].dtype == torch.uint8
    assert item["action"].shape == (8, 2)
    loader = torch.utils.data.DataLoader(train, batch_size=4)
    assert next(iter(loader))["action"].shape == (4, 8, 2)
    train_eps = {int(train[j]["robot_eef_pos"][0, 0]) for j in range(len(train))}
    val_eps = {int(val[j]["robot_eef_pos"][0, 0]) for j in range(len(val))}
    assert train_eps.isdisjoint(val_eps) and len(val_eps) == 2
