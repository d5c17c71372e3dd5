"""EpisodeStore behaviour: round trips in both zarr formats, metadata, commit rules and clear errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zarr

from robotstack.core.errors import StoreError
from robotstack.data.info import format_info, store_info
from robotstack.data.store import EpisodeMeta, EpisodeStore, time_chunks


def episode(t: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "robot_eef_pos": rng.standard_normal((t, 3)).astype(np.float32),
        "action": rng.uniform(-1, 1, (t, 4)).astype(np.float32),
        "terminated": np.arange(t) == t - 1,
        "image_front": rng.integers(0, 256, (t, 8, 8, 3), dtype=np.uint8),
    }


def meta(i: int = 0, **kw) -> EpisodeMeta:
    fields = dict(source="scripted", task="push", seed=i, success=True, policy_id="")
    fields.update(kw)
    return EpisodeMeta(**fields)


@pytest.fixture(params=[3, 2], ids=["v3", "v2"])
def fmt(request):
    return request.param


def test_round_trip_both_formats(tmp_path, fmt):
    path = tmp_path / "s.zarr"
    st = EpisodeStore.create(path, zarr_format=fmt)
    eps = [episode(t, seed=t) for t in (3, 10, 1)]
    metas = [meta(0, task="push"), meta(1, source="human", task="stack", success=False, policy_id="dp-v1"),
             meta(2, source="intervention", task="push", n_late_ticks=4)]
    for i, (e, m) in enumerate(zip(eps, metas)):
        assert st.append_episode(e, m) == i
    st = EpisodeStore.open(path)
    assert st.zarr_format == fmt
    assert st.n_episodes == 3 and len(st) == 3 and st.n_frames == 14
    assert st.episode_ends.tolist() == [3, 13, 14] and st.episode_ends.dtype == np.int64
    assert st.keys() == sorted(eps[0])
    for i, e in enumerate(eps):
        got = st.episode(i)
        for k in e:
            assert got[k].dtype == e[k].dtype and np.array_equal(got[k], e[k])
        assert st.episode_meta(i) == metas[i]
    assert st.episode_meta(-1) == metas[-1]
    full = st.load(["action"])
    assert list(full) == ["action"]
    assert np.array_equal(full["action"], np.concatenate([e["action"] for e in eps]))
    assert st.categories("task") == ["push", "stack"]
    assert st.verify() == []


def test_on_disk_layout_matches_diffusion_policy(tmp_path, fmt):
    path = tmp_path / "s.zarr"
    st = EpisodeStore.create(path, zarr_format=fmt)
    st.append_episode(episode(5), meta())
    root = zarr.open_group(str(path), mode="r")
    ends = root["meta/episode_ends"]
    assert ends.dtype == np.int64 and ends[:].tolist() == [5]
    assert ends.compressors == ()  # uncompressed, as diffusion_policy creates it
    img = root["data/image_front"]
    assert img.shape == (5, 8, 8, 3) and img.chunks == time_chunks((8, 8, 3), np.uint8)
    (codec,) = img.compressors
    if fmt == 2:
        assert codec.get_config() == {"id": "blosc", "cname": "zstd", "clevel": 5, "shuffle": 2,
                                           "blocksize": 0}
    else:
        assert (codec.cname.value, codec.clevel, codec.shuffle.value) == ("zstd", 5, "bitshuffle")


def test_chunks_are_time_only_and_about_2mb():
    assert time_chunks((96, 96, 3), np.uint8) == (72, 96, 96, 3)  # diffusion_policy's example
    assert time_chunks((7,), np.float32)[1:] == (7,)
    assert time_chunks((), np.float64) == (16_384,)  # capped: appends rewrite the tail chunk
    assert time_chunks((2000, 2000, 3), np.uint8) == (1, 2000, 2000, 3)  # never split a frame


def test_reopen_append_and_read_only(tmp_path):
    path = tmp_path / "s.zarr"
    EpisodeStore.create(path).append_episode(episode(4), meta(0))
    st = EpisodeStore.open(path, mode="a")
    st.append_episode(episode(6, 1), meta(1))
    assert EpisodeStore.open(path).episode_ends.tolist() == [4, 10]
    ro = EpisodeStore.open(path)
    with pytest.raises(StoreError, match="read-only"):
        ro.append_episode(episode(2), meta())


def test_open_or_create(tmp_path):
    path = tmp_path / "s.zarr"
    EpisodeStore.open_or_create(path).append_episode(episode(2), meta())
    st = EpisodeStore.open_or_create(path)
    st.append_episode(episode(2), meta())
    assert st.n_episodes == 2


def test_uncommitted_rows_are_ignored_then_cut_off(tmp_path, fmt):
    """The state a crash leaves: data rows and meta rows past the last end, a half-grown episode_ends."""
    path = tmp_path / "s.zarr"
    st = EpisodeStore.create(path, zarr_format=fmt)
    st.append_episode(episode(4), meta(0))
    st.append_episode(episode(3, 1), meta(1))
    root = zarr.open_group(str(path), mode="r+")
    for k in st.keys():  # an unfinished third episode: data written, episode_ends grown but not yet set
        a = root["data"][k]
        a.resize((20, *a.shape[1:]))
        a[7:20] = 1
    root["meta/seed"].resize((3,))
    root["meta/episode_ends"].resize((3,))  # reads 0 (fill): not increasing -> not committed
    ro = EpisodeStore.open(path)
    assert ro.n_episodes == 2 and ro.n_frames == 7
    assert np.array_equal(ro.load()["action"][4:], episode(3, 1)["action"])
    st = EpisodeStore.open(path, mode="a")
    assert all(st.array(k).shape[0] == 7 for k in st.keys())
    assert zarr.open_group(str(path), mode="r")["meta/episode_ends"].shape == (2,)
    st.append_episode(episode(2, 2), meta(2))
    st = EpisodeStore.open(path)
    assert st.episode_ends.tolist() == [4, 7, 9]
    assert np.array_equal(st.episode(2)["image_front"], episode(2, 2)["image_front"])


def test_episode_end_beyond_data_is_not_committed(tmp_path):
    path = tmp_path / "s.zarr"
    st = EpisodeStore.create(path)
    st.append_episode(episode(4), meta(0))
    ends = zarr.open_group(str(path), mode="r+")["meta/episode_ends"]
    ends.resize((3,))
    ends[1:] = [999, 1000]  # past the data length
    st = EpisodeStore.open(path)
    assert st.episode_ends.tolist() == [4] and st.n_ignored_ends == 2
    info = store_info(path)
    assert info["ignored_episode_ends"] == 2 and "2 meta/episode_ends entries" in format_info(info)


def test_stale_ends_do_not_reappear_after_truncation(tmp_path):
    # zarr keeps values past a shrunk shape inside the chunk; growing again would expose them
    path = tmp_path / "s.zarr"
    st = EpisodeStore.create(path)
    st.append_episode(episode(4), meta(0))
    root = zarr.open_group(str(path), mode="r+")
    for k in st.keys():
        a = root["data"][k]
        a.resize((8, *a.shape[1:]))
    ends = root["meta/episode_ends"]
    ends.resize((3,))
    ends[1:] = [0, 6]  # invalid at index 1: nothing past episode 0 commits
    st = EpisodeStore.open(path, mode="a")  # cuts off
    assert st.n_episodes == 1
    ends = zarr.open_group(str(path), mode="r+")["meta/episode_ends"]
    ends.resize((3,))
    assert ends[:].tolist() == [4, 0, 0]


def test_first_episode_after_uncommitted_first_append_may_change_schema(tmp_path):
    path = tmp_path / "s.zarr"
    st = EpisodeStore.create(path)
    root = zarr.open_group(str(path), mode="r+")
    root["data"].create_array("old_key", shape=(3,), dtype="float32")  # a first append that never committed
    st = EpisodeStore.open(path, mode="a")
    st.append_episode(episode(2), meta())
    assert EpisodeStore.open(path).keys() == sorted(episode(2))


# ---- errors -----------------------------------------------------------------------------------------------
def test_missing_path(tmp_path):
    with pytest.raises(StoreError, match="does not exist") as e:
        EpisodeStore.open(tmp_path / "nope.zarr")
    assert "nope.zarr" in str(e.value)


def test_not_a_zarr_store(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(StoreError, match="not a zarr store"):
        EpisodeStore.open(tmp_path / "dir")
    (tmp_path / "file.zarr").write_text("hello")
    with pytest.raises(StoreError, match="not a zarr store"):
        EpisodeStore.open(tmp_path / "file.zarr")


def test_store_of_another_layout(tmp_path):
    g = zarr.open_group(str(tmp_path / "a.zarr"), mode="w")
    g.create_group("data")
    g.create_group("meta")
    with pytest.raises(StoreError, match="another layout.*meta/episode_ends"):
        EpisodeStore.open(tmp_path / "a.zarr")
    g = zarr.open_group(str(tmp_path / "b.zarr"), mode="w")
    g.create_array("x", shape=(3,), dtype="int64")
    with pytest.raises(StoreError, match=r"another layout.*\['data', 'meta'\]"):
        EpisodeStore.open(tmp_path / "b.zarr")


def test_create_refuses_existing_path(tmp_path):
    EpisodeStore.create(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="already exists"):
        EpisodeStore.create(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="zarr_format=4"):
        EpisodeStore.create(tmp_path / "t.zarr", zarr_format=4)


def test_corrupt_metadata(tmp_path, fmt):
    path = tmp_path / "s.zarr"
    EpisodeStore.create(path, zarr_format=fmt).append_episode(episode(3), meta())
    meta_file = path / "meta" / "episode_ends" / ("zarr.json" if fmt == 3 else ".zarray")
    meta_file.write_text(meta_file.read_text()[:20])  # truncated JSON
    with pytest.raises(StoreError, match="episode_ends"):
        EpisodeStore.open(path)


def test_corrupt_root_metadata(tmp_path):
    path = tmp_path / "s.zarr"
    EpisodeStore.create(path)
    (path / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match="cannot read the zarr group metadata"):
        EpisodeStore.open(path)


def test_truncated_chunk(tmp_path, fmt):
    path = tmp_path / "s.zarr"
    EpisodeStore.create(path, zarr_format=fmt).append_episode(episode(30), meta())
    chunk_dir = path / "data" / "image_front"
    chunk = max((p for p in chunk_dir.rglob("*") if p.is_file() and "zarr.json" not in p.name
                 and not p.name.startswith(".")), key=lambda p: p.stat().st_size)
    chunk.write_bytes(chunk.read_bytes()[:100])
    st = EpisodeStore.open(path)
    with pytest.raises(StoreError, match=r"data/image_front rows 0:30.*corrupt or truncated chunk"):
        st.load()


def test_missing_chunk_is_reported_by_verify(tmp_path):
    path = tmp_path / "s.zarr"
    EpisodeStore.create(path).append_episode({"terminated": np.zeros(5, bool)}, meta())  # all-zero chunk kept
    os.remove(path / "data" / "terminated" / "c" / "0")
    assert EpisodeStore.open(path).verify() == ["data/terminated: 1 of 1 chunks missing (zeros would be read)"]


def test_mismatched_lengths_in_an_episode(tmp_path):
    st = EpisodeStore.create(tmp_path / "s.zarr")
    e = episode(5)
    e["action"] = e["action"][:4]
    with pytest.raises(StoreError, match=r"mismatched lengths.*'action': 4"):
        st.append_episode(e, meta())
    assert st.n_episodes == 0


def test_new_or_missing_key(tmp_path):
    st = EpisodeStore.create(tmp_path / "s.zarr")
    st.append_episode(episode(3), meta())
    e = episode(3)
    e["goal"] = np.zeros((3, 3), np.float32)
    with pytest.raises(StoreError, match=r"new \['goal'\]"):
        st.append_episode(e, meta())
    e = episode(3)
    del e["action"]
    with pytest.raises(StoreError, match=r"missing \['action'\]"):
        st.append_episode(e, meta())


def test_dtype_or_shape_mismatch(tmp_path):
    st = EpisodeStore.create(tmp_path / "s.zarr")
    st.append_episode(episode(3), meta())
    e = episode(3)
    e["action"] = e["action"].astype(np.float64)
    with pytest.raises(StoreError, match=r"'action' is float64 \(T, 4\) but the store holds float32 \(N, 4\)"):
        st.append_episode(e, meta())
    e = episode(3)
    e["image_front"] = np.zeros((3, 9, 8, 3), np.uint8)
    with pytest.raises(StoreError, match=r"'image_front' is uint8 \(T, 9, 8, 3\)"):
        st.append_episode(e, meta())
    assert EpisodeStore.open(tmp_path / "s.zarr").n_episodes == 1


def test_bad_frames(tmp_path):
    st = EpisodeStore.create(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="non-empty dict"):
        st.append_episode({}, meta())
    with pytest.raises(StoreError, match="empty episode"):
        st.append_episode({"a": np.zeros((0, 2))}, meta())
    with pytest.raises(StoreError, match="time-first"):
        st.append_episode({"a": np.float32(1)}, meta())
    with pytest.raises(StoreError, match="dtype <U1"):
        st.append_episode({"a": np.array(["x"])}, meta())
    with pytest.raises(StoreError, match="expected an EpisodeMeta"):
        st.append_episode(episode(2), {"source": "human"})


def test_bad_meta():
    with pytest.raises(StoreError, match=r"source='robot'.*one of \('scripted'"):
        EpisodeMeta("robot", "push", 0, True)
    with pytest.raises(StoreError, match="seed=-3"):
        EpisodeMeta("human", "push", -3, True)
    with pytest.raises(StoreError, match="success='yes'"):
        EpisodeMeta("human", "push", 0, "yes")


def test_unknown_key_and_episode_index(tmp_path):
    st = EpisodeStore.create(tmp_path / "s.zarr")
    st.append_episode(episode(3), meta())
    with pytest.raises(StoreError, match=r"unknown key\(s\) \['img'\]; the store has \['action'"):
        st.load(["img"])
    with pytest.raises(StoreError, match="unknown key"):
        st.episode(0, ["img"])
    with pytest.raises(StoreError, match="episode index 5 out of range"):
        st.episode(5)


def test_meta_code_out_of_range_is_corrupt(tmp_path):
    path = tmp_path / "s.zarr"
    EpisodeStore.create(path).append_episode(episode(2), meta(task="push"))
    zarr.open_group(str(path), mode="r+")["meta/task"][0] = 7
    with pytest.raises(StoreError, match="meta/task code 7"):
        EpisodeStore.open(path).episode_meta(0)


def test_partial_meta_columns_are_corrupt(tmp_path):
    path = tmp_path / "s.zarr"
    EpisodeStore.create(path).append_episode(episode(2), meta())
    del zarr.open_group(str(path), mode="r+")["meta"]["seed"]
    with pytest.raises(StoreError, match=r"corrupt metadata.*not \['seed'\]"):
        EpisodeStore.open(path)


def test_metadata_files_are_json(tmp_path):
    # the categories table is plain JSON in the array attributes (readable without robotstack)
    path = tmp_path / "s.zarr"
    EpisodeStore.create(path).append_episode(episode(2), meta(task="pick"))
    doc = json.loads((path / "meta" / "task" / "zarr.json").read_text())
    assert doc["attributes"]["categories"] == ["pick"]
