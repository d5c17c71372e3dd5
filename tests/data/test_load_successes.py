"""load_stores(successes_only=True): filtered imitation keeps exactly the successful episodes, in order."""

import numpy as np
import pytest

from robotstack.core import keys as K
from robotstack.core.errors import StoreError
from robotstack.data.store import EpisodeMeta, EpisodeStore, load_stores


def _episode(n: int, value: float) -> dict[str, np.ndarray]:
    return {K.ACTION: np.full((n, 2), value, np.float32), K.REWARD: np.zeros(n, np.float32)}


def test_successes_only_keeps_the_successful_episodes(tmp_path):
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    with EpisodeStore.create(a) as s:  # success, failure, success
        for n, v, ok in ((3, 1.0, True), (4, 2.0, False), (2, 3.0, True)):
            s.append_episode(_episode(n, v), EpisodeMeta("scripted", "reach", int(v), ok, ""))
    with EpisodeStore.create(b) as s:  # failure only: contributes nothing
        s.append_episode(_episode(5, 4.0), EpisodeMeta("policy", "reach", 9, False, "p"))
    arrays, ends, _ = load_stores([a, b], [K.ACTION], successes_only=True)
    assert ends.tolist() == [3, 5]
    assert arrays[K.ACTION][:, 0].tolist() == [1.0] * 3 + [3.0] * 2
    everything, all_ends, _ = load_stores([a, b], [K.ACTION])
    assert all_ends.tolist() == [3, 7, 9, 14] and len(everything[K.ACTION]) == 14
    with pytest.raises(StoreError, match="no successful episode"):
        load_stores([b], [K.ACTION], successes_only=True)
