"""EpisodeRecorder: measured capture time beside the nominal grid time, late ticks, save / discard."""

from __future__ import annotations

import time

import numpy as np
import pytest

from robotstack.core import keys as K
from robotstack.core.errors import StoreError
from robotstack.data.recorder import EpisodeRecorder
from robotstack.data.store import EpisodeMeta, EpisodeStore


def obs(i: int) -> dict[str, np.ndarray]:
    return {K.JOINT_POS: np.full(7, i, np.float32), K.image_key("front"): np.full((4, 4, 3), i, np.uint8)}


def test_records_frames_and_times(tmp_path):
    st = EpisodeStore.create(tmp_path / "s.zarr")
    rec = EpisodeRecorder(st, control_hz=10)  # tolerance = 50 ms
    rec.begin(source="human", task="push", seed=7, policy_id="")
    captures = [0.0, 0.101, 0.26, 0.3]  # frame 2 is 60 ms behind its slot at 0.2 s
    for i, c in enumerate(captures):
        rec.add(obs(i), np.full(4, 0.1 * i), reward=float(i), terminated=i == 3, truncated=False,
                intervention=i == 1, capture_time=c)
    assert rec.save(success=True) == 0
    assert not rec.recording
    st = EpisodeStore.open(tmp_path / "s.zarr")
    ep = st.episode(0)
    assert np.allclose(ep[K.TIMESTAMP], [0.0, 0.1, 0.2, 0.3]) and ep[K.TIMESTAMP].dtype == np.float64
    assert ep[K.CAPTURE_TIME].tolist() == captures
    assert ep[K.LATE_TICK].tolist() == [False, False, True, False]
    assert ep[K.INTERVENTION].tolist() == [False, True, False, False]
    assert ep[K.TERMINATED].tolist() == [False, False, False, True]
    assert ep[K.REWARD].dtype == np.float32 and ep[K.ACTION].dtype == np.float32
    assert ep[K.JOINT_POS][2].tolist() == [2.0] * 7
    assert st.episode_meta(0) == EpisodeMeta("human", "push", 7, True, "", n_late_ticks=1)


def test_measures_capture_time_when_not_given(tmp_path):
    rec = EpisodeRecorder(EpisodeStore.create(tmp_path / "s.zarr"), control_hz=50)
    rec.begin({"source": "scripted", "task": "reach", "seed": 0})  # dict form (docs/CONTRACTS.md)
    for i in range(3):
        rec.add(obs(i), np.zeros(4), 0.0, False, False)
        time.sleep(0.02)
    rec.save(success=False)
    ep = EpisodeStore.open(tmp_path / "s.zarr").episode(0)
    c = ep[K.CAPTURE_TIME]
    assert c[0] >= 0 and np.all(np.diff(c) >= 0.019)
    assert not np.array_equal(c, ep[K.TIMESTAMP])  # measured, not derived from the frame index


def test_obs_buffers_are_copied(tmp_path):
    rec = EpisodeRecorder(EpisodeStore.create(tmp_path / "s.zarr"), control_hz=10)
    rec.begin(source="policy", task="push", seed=1, policy_id="dp")
    buf = obs(0)
    for i in range(3):
        buf[K.JOINT_POS][:] = i  # a driver reusing its buffer
        rec.add(buf, np.zeros(4), 0.0, False, False, capture_time=0.1 * i)
    rec.save(success=True)
    assert EpisodeStore.open(tmp_path / "s.zarr").episode(0)[K.JOINT_POS][:, 0].tolist() == [0, 1, 2]


def test_discard_writes_nothing(tmp_path):
    st = EpisodeStore.create(tmp_path / "s.zarr")
    rec = EpisodeRecorder(st, control_hz=10)
    rec.begin(source="human", task="push", seed=0)
    rec.add(obs(0), np.zeros(4), 0.0, False, False)
    rec.discard()
    assert st.n_episodes == 0 and not rec.recording
    rec.begin(source="human", task="push", seed=1)
    rec.add(obs(0), np.zeros(4), 0.0, False, False)
    assert rec.save(True) == 0


def test_recorder_errors(tmp_path):
    rec = EpisodeRecorder(EpisodeStore.create(tmp_path / "s.zarr"), control_hz=10)
    with pytest.raises(StoreError, match="begin"):
        rec.add(obs(0), np.zeros(4), 0.0, False, False)
    with pytest.raises(StoreError, match=r"unknown meta field\(s\) \['sucess'\]"):
        rec.begin(source="human", task="push", seed=0, sucess=True)
    with pytest.raises(StoreError, match="source='robot'"):
        rec.begin(source="robot", task="push", seed=0)
    rec.begin(source="human", task="push", seed=0)
    with pytest.raises(StoreError, match="already being recorded"):
        rec.begin(source="human", task="push", seed=0)
    with pytest.raises(StoreError, match="no frames"):
        rec.save(True)
    rec.add(obs(0), np.zeros(4), 0.0, False, False)
    with pytest.raises(StoreError, match="obs keys"):
        rec.add({K.JOINT_POS: np.zeros(7, np.float32)}, np.zeros(4), 0.0, False, False)
    rec.add({**obs(1), K.JOINT_POS: np.zeros(6, np.float32)}, np.zeros(4), 0.0, False, False)
    with pytest.raises(StoreError, match="'robot_joint_pos' changed shape"):
        rec.save(True)
    with pytest.raises(StoreError, match="control_hz"):
        EpisodeRecorder(rec.store, control_hz=0)
