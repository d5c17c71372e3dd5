"""Subprocess writer for the crash tests: appends deterministic episodes and reports each step on stdout.

usage: crash_writer.py STORE MODE [ARGS]
  forever            append episode after episode until killed; prints "committed <i>" after each commit
  big                print "begin <i>" then append one large episode (a target for SIGINT / SIGTERM); on
                     KeyboardInterrupt print "interrupted <n_episodes>" and exit 130
  fsize LIMIT        set RLIMIT_FSIZE=LIMIT bytes (SIGXFSZ ignored), append 3 small episodes, then a large one
                     that cannot fit in one file, then a small one again; prints what happened
The episode content is a pure function of (episode index, length) so the parent can check it bit-exactly.
"""

from __future__ import annotations

import resource
import signal
import sys

import numpy as np

from robotstack.core.errors import StoreError
from robotstack.data.store import EpisodeMeta, EpisodeStore


def episode_length(i: int) -> int:
    return 5 + (i * 7) % 31


def make_episode(i: int, length: int | None = None) -> dict[str, np.ndarray]:
    t = episode_length(i) if length is None else length
    rng = np.random.default_rng(1000 + i)
    return {
        "robot_joint_pos": rng.standard_normal((t, 7)).astype(np.float32),
        "action": rng.uniform(-1, 1, (t, 4)).astype(np.float32),
        "reward": np.full(t, i, dtype=np.float32),
        "terminated": np.arange(t) == t - 1,
        "image_front": rng.integers(0, 256, (t, 32, 32, 3), dtype=np.uint8),  # incompressible: real write time
    }


def make_meta(i: int) -> EpisodeMeta:
    return EpisodeMeta(source="scripted", task=f"task{i % 3}", seed=i, success=i % 2 == 0, policy_id=f"p{i % 2}")


def main() -> int:
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so write() fails with EFBIG instead of killing us
        limit = int(sys.argv[3])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    store = EpisodeStore.open_or_create(path)
    i = store.n_episodes
    if mode == "forever":
        while True:
            store.append_episode(make_episode(i), make_meta(i))
            print(f"committed {i}", flush=True)
            i += 1
    if mode == "big":
        frames, meta = make_episode(i, length=2000), make_meta(i)
        print(f"begin {i}", flush=True)
        try:
            store.append_episode(frames, meta)
            print(f"committed {i}", flush=True)
        except KeyboardInterrupt:
            print(f"interrupted {store.n_episodes}", flush=True)
            return 130
        return 0
    if mode == "fsize":
        for _ in range(3):
            store.append_episode(make_episode(i, length=20), make_meta(i))
            i += 1
        try:
            store.append_episode(make_episode(i, length=400), make_meta(i))
            print("big append succeeded", flush=True)
        except StoreError as e:
            print(f"StoreError: {e}", flush=True)
        store.append_episode(make_episode(i, length=20), make_meta(i))  # recovers once data fits again
        print(f"committed {store.n_episodes}", flush=True)
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main())
