"""merge_stores and store_info / format_info."""

from __future__ import annotations

import numpy as np
import pytest

from robotstack.core import keys as K
from robotstack.core.errors import StoreError
from robotstack.data.info import format_info, store_info
from robotstack.data.merge import merge_stores
from robotstack.data.recorder import EpisodeRecorder
from robotstack.data.store import EpisodeMeta, EpisodeStore


def make_store(path, n, source, fmt=3, extra_key=None, start_seed=0):
    st = EpisodeStore.create(path, zarr_format=fmt)
    for i in range(n):
        t = 3 + i
        frames = {"action": np.full((t, 2), start_seed + i, np.float32),
                  "image_front": np.zeros((t, 4, 4, 3), np.uint8)}
        if extra_key:
            frames[extra_key] = np.zeros((t, 1), np.float32)
        st.append_episode(frames, EpisodeMeta(source, f"task{i % 2}", start_seed + i, i % 2 == 0))
    return st


def test_merge_concatenates_episodes_and_meta(tmp_path):
    a = make_store(tmp_path / "a.zarr", 2, "human")
    b = make_store(tmp_path / "b.zarr", 3, "scripted", fmt=2, start_seed=10)
    c = merge_stores([tmp_path / "a.zarr", tmp_path / "b.zarr"], tmp_path / "c.zarr")
    c = EpisodeStore.open(tmp_path / "c.zarr")
    assert c.n_episodes == 5 and c.n_frames == a.n_frames + b.n_frames
    assert [c.episode(i)["action"][0, 0] for i in range(5)] == [0, 1, 10, 11, 12]
    assert [m.source for m in c.episode_metas()] == ["human"] * 2 + ["scripted"] * 3
    assert c.episode_meta(3) == b.episode_meta(1)


def test_merge_names_the_missing_key(tmp_path):
    make_store(tmp_path / "a.zarr", 1, "human")
    make_store(tmp_path / "b.zarr", 1, "human", extra_key="goal")
    with pytest.raises(StoreError, match=r"key 'goal' of .*b.zarr is missing in .*a.zarr"):
        merge_stores([tmp_path / "a.zarr", tmp_path / "b.zarr"], tmp_path / "c.zarr")
    assert not (tmp_path / "c.zarr").exists()
    with pytest.raises(StoreError, match=r"key 'goal' of .*b.zarr is missing in .*a.zarr"):
        merge_stores([tmp_path / "b.zarr", tmp_path / "a.zarr"], tmp_path / "c.zarr")
    with pytest.raises(StoreError, match="also a source"):
        merge_stores([tmp_path / "a.zarr"], tmp_path / "a.zarr")


def test_merge_on_named_keys_leaves_the_others_out(tmp_path):
    """An arm recording (telemetry keys) merged into a sim store: only the named keys are written."""
    make_store(tmp_path / "a.zarr", 1, "scripted")
    make_store(tmp_path / "b.zarr", 2, "policy", extra_key="latency_ms")
    merge_stores([tmp_path / "a.zarr", tmp_path / "b.zarr"], tmp_path / "c.zarr", keys=["action", "image_front"])
    with EpisodeStore.open(tmp_path / "c.zarr") as c:
        assert sorted(c.key_specs()) == ["action", "image_front"] and c.n_episodes == 3
    with pytest.raises(StoreError, match=r"key\(s\) \['latency_ms'\] are missing in .*a.zarr"):
        merge_stores([tmp_path / "a.zarr", tmp_path / "b.zarr"], tmp_path / "d.zarr", keys=["action", "latency_ms"])
    assert not (tmp_path / "d.zarr").exists()


def test_merge_rejects_dtype_mismatch(tmp_path):
    make_store(tmp_path / "a.zarr", 1, "human")
    st = EpisodeStore.create(tmp_path / "b.zarr")
    st.append_episode({"action": np.zeros((2, 2), np.float64), "image_front": np.zeros((2, 4, 4, 3), np.uint8)},
                      EpisodeMeta("human", "t", 0, True))
    with pytest.raises(StoreError, match="'action' is float64"):
        merge_stores([tmp_path / "a.zarr", tmp_path / "b.zarr"], tmp_path / "c.zarr")


def test_info_and_format(tmp_path):
    path = tmp_path / "s.zarr"
    rec = EpisodeRecorder(EpisodeStore.create(path), control_hz=10)
    for ep, (source, success) in enumerate([("human", True), ("human", False), ("policy", True)]):
        rec.begin(source=source, task="push", seed=ep)
        for i in range(10):
            lag = 0.08 if (ep, i) == (0, 5) else 0.001  # one late tick in the store
            rec.add({K.EEF_POS: np.zeros(3, np.float32)}, np.zeros(4), 0.0, False, False,
                    capture_time=0.1 * i + lag)
        rec.save(success)
    info = store_info(path)
    assert info["episodes"] == 3 and info["frames"] == 30
    assert info["success_rate"] == pytest.approx(2 / 3)
    assert info["by_source"] == {"human": 2, "policy": 1}
    assert info["keys"][K.EEF_POS] == {"shape": [3], "dtype": "float32", "chunks": [16384, 3]}
    assert info["timing"]["late_ticks"] == 1
    assert info["timing"]["lag_p50_ms"] == pytest.approx(1.0)
    assert info["timing"]["lag_max_ms"] == pytest.approx(80.0)
    text = format_info(info)
    assert "episodes        3" in text and "66.7% of 3" in text and "late ticks      1 (3.33%)" in text
    assert "robot_eef_pos" in text and "(3,)" in text
