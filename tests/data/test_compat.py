"""Interop with diffusion_policy: stores it writes (format 2, Blosc, .zarr.zip) read here, and ours read there."""

from __future__ import annotations

import numcodecs
import numpy as np
import pytest
import zarr
import zarr.storage

from robotstack.core.errors import StoreError
from robotstack.data.info import store_info
from robotstack.data.store import UNKNOWN_META, EpisodeMeta, EpisodeStore

LENGTHS = (7, 3, 12)


def dp_episodes() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"img": rng.integers(0, 256, (t, 96, 96, 3), dtype=np.uint8),
             "state": rng.standard_normal((t, 5)).astype(np.float32),
             "action": rng.standard_normal((t, 2)).astype(np.float32)} for t in LENGTHS]


def write_like_diffusion_policy(store) -> None:
    """What diffusion_policy's ReplayBuffer.create_empty_zarr + add_episode(compressors='disk') leave on disk,
    written with raw zarr calls: format 2 groups data/meta, Blosc zstd bitshuffle data arrays, get_optimal_chunks
    chunking, int64 episode_ends with no compressor."""
    root = zarr.open_group(store, mode="w", zarr_format=2)
    data, meta = root.create_group("data"), root.create_group("meta")
    disk = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
    eps = dp_episodes()
    n = sum(LENGTHS)
    chunks = {"img": (72, 96, 96, 3), "state": (7, 5), "action": (7, 2)}  # capped by the first episode (T=7)
    for k in eps[0]:
        arr = data.create_array(k, shape=(n, *eps[0][k].shape[1:]), dtype=eps[0][k].dtype, chunks=chunks[k],
                                compressors=disk)
        arr[:] = np.concatenate([e[k] for e in eps])
    ends = meta.create_array("episode_ends", shape=(len(LENGTHS),), dtype="int64", chunks=(len(LENGTHS),),
                             compressors=None)
    ends[:] = np.cumsum(LENGTHS)


def check_reads_dp_store(st: EpisodeStore) -> None:
    eps = dp_episodes()
    assert st.zarr_format == 2 and st.n_episodes == 3 and st.episode_ends.tolist() == list(np.cumsum(LENGTHS))
    assert st.keys() == ["action", "img", "state"]
    assert not st.has_episode_meta
    for i, e in enumerate(eps):
        got = st.episode(i)
        assert all(np.array_equal(got[k], e[k]) for k in e)
        assert st.episode_meta(i) == UNKNOWN_META  # no robotstack metadata: every field unknown
    assert np.array_equal(st.load(["state"])["state"], np.concatenate([e["state"] for e in eps]))


def test_reads_store_written_like_diffusion_policy(tmp_path):
    path = tmp_path / "pusht.zarr"
    write_like_diffusion_policy(str(path))
    st = EpisodeStore.open(path)
    check_reads_dp_store(st)
    assert st.verify() == []
    info = store_info(path)
    assert info["episodes"] == 3 and info["success_rate"] is None and info["timing"] is None
    assert info["by_source"] == {"unknown": 3}


def test_reads_zarr_zip(tmp_path):
    path = tmp_path / "pusht.zarr.zip"
    zs = zarr.storage.ZipStore(path, mode="w")
    write_like_diffusion_policy(zs)
    zs.close()
    with EpisodeStore.open(path) as st:
        check_reads_dp_store(st)
        assert st.verify() == []
    assert store_info(path)["frames"] == sum(LENGTHS)
    with pytest.raises(StoreError, match="read-only"):
        EpisodeStore.open(path, mode="a")


def test_append_to_diffusion_policy_store(tmp_path):
    path = tmp_path / "pusht.zarr"
    write_like_diffusion_policy(str(path))
    st = EpisodeStore.open(path, mode="a")
    new = {k: v[:4] for k, v in dp_episodes()[0].items()}
    m = EpisodeMeta("human", "push_t", 5, True, "")
    assert st.append_episode(new, m) == 3
    st = EpisodeStore.open(path)
    assert st.episode_meta(3) == m
    assert st.episode_meta(0) == UNKNOWN_META  # earlier episodes got unknown rows
    assert np.array_equal(st.episode(3)["img"], new["img"])


def test_our_format2_store_passes_diffusion_policy_checks(tmp_path):
    path = tmp_path / "ours.zarr"
    st = EpisodeStore.create(path, zarr_format=2)
    for e in dp_episodes():
        st.append_episode(e, EpisodeMeta("scripted", "push_t", 0, True))
    # ReplayBuffer.__init__'s checks and get_episode_slice, with raw zarr
    root = zarr.open_group(str(path), mode="r")
    assert root.metadata.zarr_format == 2
    ends = root["meta"]["episode_ends"][:]
    assert ends.dtype == np.int64
    for _, arr in root["data"].arrays():
        assert arr.shape[0] == ends[-1]
    assert np.array_equal(root["data"]["img"][ends[0]:ends[1]], dp_episodes()[1]["img"])
    # every meta/* array loads to numpy (ReplayBuffer.copy_from_store loads them all)
    assert all(isinstance(a[:], np.ndarray) for _, a in root["meta"].arrays())
