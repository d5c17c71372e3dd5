import numpy as np
import pytest

from robotstack.core.errors import StoreError
from robotstack.data.store import EpisodeMeta, EpisodeStore, load_stores


def _store(path, lengths, width=2, start=0):
    store = EpisodeStore.create(path)
    for i, n in enumerate(lengths):
        x = np.arange(start, start + n * width, dtype=np.float32).reshape(n, width)
        store.append_episode({"x": x, "action": x[:, :1]}, EpisodeMeta("scripted", "t", i, True))
        start += n * width
    store.close()
    return path


def test_concatenates_in_order_with_offset_episode_ends(tmp_path):
    a = _store(tmp_path / "a.zarr", [3, 2])
    b = _store(tmp_path / "b.zarr", [4], start=1000)
    arrays, ends, specs = load_stores([a, b], ["x", "action"])
    assert ends.tolist() == [3, 5, 9]
    assert arrays["x"].shape == (9, 2) and arrays["x"][5, 0] == 1000
    assert specs["x"][0] == (2,)


def test_mismatched_shapes_and_unknown_keys_are_named(tmp_path):
    a = _store(tmp_path / "a.zarr", [3])
    b = _store(tmp_path / "b.zarr", [3], width=3)
    with pytest.raises(StoreError, match="b.zarr.*differ"):
        load_stores([a, b], ["x"])
    with pytest.raises(StoreError, match="unknown key"):
        load_stores([a], ["nope"])
