"""Chunk sampler (robotstack.data.chunks): terminals, truncations, episode ends, discounting, flags, stores."""

import numpy as np
import pytest

from robotstack.core import keys as K
from robotstack.core.errors import StoreError
from robotstack.data.chunks import ChunkSampler
from robotstack.data.store import EpisodeMeta, EpisodeStore

G = 0.9


def episodes():
    """Three hand-built episodes over 12 frames; obs = frame index, action = 10 * frame index.

    ep0 frames 0..3: terminated at frame 3 (reward 1 there)
    ep1 frames 4..8: truncated at frame 8 (time limit), intervention on frames 5, 6
    ep2 frames 9..11: ends at frame 11 with no flag at all (recording stopped)
    """
    n = 12
    data = {
        "state": np.arange(n, dtype=np.float32)[:, None],
        K.ACTION: (10 * np.arange(n, dtype=np.float32))[:, None],
        K.REWARD: np.array([0, 0.5, 0, 1, 1, 2, 3, 4, 5, 1, 1, 1], np.float32),
        K.TERMINATED: np.zeros(n, bool),
        K.TRUNCATED: np.zeros(n, bool),
        K.INTERVENTION: np.zeros(n, bool),
    }
    data[K.TERMINATED][3] = True
    data[K.TRUNCATED][8] = True
    data[K.INTERVENTION][[5, 6]] = True
    return data, np.array([4, 9, 12])


def sampler(h=3, **kw):
    data, ends = episodes()
    return ChunkSampler(data, ends, h, G, ["state"], episode_source=np.array([0, 3, 2]), **kw)


def test_full_chunk_inside_an_episode():
    b = sampler().batch([4])
    assert b.h_eff.tolist() == [3] and not b.done[0] and b.complete[0]
    assert b.reward_sum[0] == pytest.approx(1 + G * 2 + G**2 * 3)
    assert b.discount[0] == pytest.approx(G**3)
    assert b.actions[0, :, 0].tolist() == [40, 50, 60]
    assert b.next_obs["state"][0, -1, 0] == 7
    assert b.valid[0].all()


def test_terminal_inside_the_chunk_stops_rewards_and_bootstrap():
    b = sampler().batch([1, 2, 3])
    assert b.h_eff.tolist() == [3, 2, 1]
    assert b.done.tolist() == [True, True, True] and b.complete.all()
    assert b.reward_sum.tolist() == pytest.approx([0.5 + G**2 * 1, G * 1, 1.0])
    assert b.discount.tolist() == pytest.approx([G**3, G**2, G])
    assert b.valid.tolist() == [[True] * 3, [True, True, False], [True, False, False]]
    # padding repeats the terminal action; the next frame of the following episode (4) is never used
    assert b.actions[2, :, 0].tolist() == [30, 30, 30]
    assert b.next_obs["state"][:, -1, 0].max() <= 3


def test_truncation_cuts_the_chunk_before_the_unknown_successor():
    s = sampler()
    b = s.batch([6, 7])
    # frame 8 is truncated: its successor is not stored -> chunk ends before it, bootstraps from obs 8
    assert b.h_eff.tolist() == [2, 1] and not b.done.any() and not b.complete.any()
    assert b.reward_sum.tolist() == pytest.approx([3 + G * 4, 4.0])
    assert b.next_obs["state"][:, -1, 0].tolist() == [8, 8]
    assert b.discount.tolist() == pytest.approx([G**2, G])
    assert 8 not in s.starts  # h' would be 0
    with pytest.raises(StoreError, match="truncated / last non-terminal"):
        s.batch([8])


def test_episode_end_without_flags_is_a_cut_and_chunks_never_cross_episodes():
    s = sampler(h=4)
    b = s.batch([9, 10])
    assert b.h_eff.tolist() == [2, 1] and not b.done.any()
    assert b.next_obs["state"][:, -1, 0].tolist() == [11, 11]
    assert b.reward_sum.tolist() == pytest.approx([1 + G, 1.0])
    assert 11 not in s.starts and 3 in s.starts  # the terminal frame is a start, the open end is not
    assert (b.actions[:, :, 0] <= 110).all()


def test_complete_only_keeps_full_or_terminal_chunks():
    s = sampler(h=3, complete_only=True)
    assert s.starts.tolist() == [0, 1, 2, 3, 4, 5]  # 0..3 reach the terminal, 4..5 are full; 9 hits the open end
    b = s.batch(s.starts)
    assert b.complete.all()


def test_intervention_and_source_flags():
    b = sampler().batch([4, 6, 0])
    assert b.intervention.tolist() == [[False, True, True], [True, False, False], [False] * 3]
    assert b.any_intervention.tolist() == [True, True, False]
    assert b.source.tolist() == [3, 3, 0]


def test_observation_window_is_edge_padded_at_the_episode_start():
    b = sampler(n_obs_steps=3).batch([4, 5, 1])
    assert b.obs["state"][:, :, 0].tolist() == [[4, 4, 4], [4, 4, 5], [0, 0, 1]]
    assert b.next_obs["state"][0, :, 0].tolist() == [5, 6, 7]


def test_gamma_discounting_matches_a_loop():
    data, ends = episodes()
    for h in (1, 2, 3, 5):
        s = ChunkSampler(data, ends, h, 0.7, ["state"])
        b = s.batch(s.starts)
        for row, t in enumerate(s.starts):
            total, k = 0.0, 0
            while k < h:
                j = t + k
                if data[K.TERMINATED][j]:
                    total += 0.7**k * data[K.REWARD][j]
                    k += 1
                    break
                if data[K.TRUNCATED][j] or j + 1 in ends:
                    break
                total += 0.7**k * data[K.REWARD][j]
                k += 1
            assert b.h_eff[row] == k and b.reward_sum[row] == pytest.approx(total), (h, t)


def test_sample_is_seeded_and_draws_only_starts():
    s = sampler()
    a = s.sample(np.random.default_rng(0), 64)
    b = s.sample(np.random.default_rng(0), 64)
    assert np.array_equal(a.index, b.index) and set(a.index) <= set(s.starts.tolist())


def test_bad_inputs_fail_with_names():
    data, ends = episodes()
    with pytest.raises(StoreError, match="missing key"):
        ChunkSampler({k: v for k, v in data.items() if k != K.REWARD}, ends, 2, G, ["state"])
    with pytest.raises(StoreError, match="horizon"):
        ChunkSampler(data, ends, 0, G, ["state"])
    with pytest.raises(StoreError, match="episode_ends"):
        ChunkSampler(data, np.array([5, 3]), 2, G, ["state"])


def test_from_store_reads_sources_and_flags(tmp_path):
    data, ends = episodes()
    store = EpisodeStore.create(tmp_path / "s.zarr")
    srcs = ["scripted", "intervention", "policy"]
    start = 0
    for e, src in zip(ends, srcs):
        store.append_episode({k: v[start:e] for k, v in data.items()}, EpisodeMeta(src, "push", 0, True))
        start = e
    store.close()
    with EpisodeStore.open(tmp_path / "s.zarr") as st:
        s = ChunkSampler.from_store(st, 3, G, ["state"])
    ref = sampler()
    b, r = s.batch(s.starts), ref.batch(ref.starts)
    assert np.array_equal(s.starts, ref.starts)
    assert [s.source_names[c] for c in b.source[[0, 4, -1]]] == ["scripted", "intervention", "policy"]
    assert np.allclose(b.reward_sum, r.reward_sum) and np.array_equal(b.intervention, r.intervention)
    assert s.source_code("intervention") == 3
