"""Crash safety with real processes and real OS limits: SIGKILL at random moments, SIGINT / SIGTERM during a
commit, and a file-size limit (RLIMIT_FSIZE) standing in for a full disk."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robotstack.core.errors import StoreError
from robotstack.data.store import EpisodeStore

HELPERS = Path(__file__).parent / "helpers"
sys.path.insert(0, str(HELPERS))
import crash_writer  # noqa: E402

WRITER = str(HELPERS / "crash_writer.py")


def start_writer(path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, WRITER, str(path), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def check_contents(path: Path, expected_lengths: dict[int, int] | None = None) -> EpisodeStore:
    """Every committed episode equals what the writer generated for its index, bit for bit."""
    st = EpisodeStore.open(path, mode="r")
    for i in range(st.n_episodes):
        want = crash_writer.make_episode(i, (expected_lengths or {}).get(i))
        got = st.episode(i)
        assert sorted(got) == sorted(want)
        for k in want:
            assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), (i, k)
        assert st.episode_meta(i) == crash_writer.make_meta(i)
    return st


def kill_rounds(path: Path, rounds: int, seed: int) -> int:
    """Kill a writer `rounds` times; returns how many kills left an unfinished append behind."""
    rng = random.Random(seed)
    reported = -1
    unfinished = 0
    for _ in range(rounds):
        proc = start_writer(path, "forever")
        first = proc.stdout.readline()  # wait until the writer is past its imports and committing
        assert first.startswith("committed"), proc.stderr.read()
        reported = max(reported, int(first.split()[1]))
        time.sleep(rng.uniform(0.0, 0.4))
        proc.kill()  # SIGKILL: no handler, no cleanup, wherever it is in an append
        out, _ = proc.communicate()
        for line in out.splitlines():
            reported = max(reported, int(line.split()[1]))
        st = check_contents(path)
        unfinished += any(st.array(k).shape[0] > st.n_frames for k in st.keys())
        assert st.n_episodes >= reported + 1  # nothing reported as committed was lost
        assert st.n_episodes <= reported + 2  # at most the one being written when killed (commit done, not printed)
    # an append-mode open cuts the unfinished rows off and removes temp files
    st = EpisodeStore.open(path, mode="a")
    assert all(st.array(k).shape[0] == st.n_frames for k in st.keys())
    assert not [p for p in path.rglob("*") if p.name.endswith((".rstmp", ".partial"))]
    assert st.verify() == []
    return unfinished


def test_sigkill_during_appends_keeps_committed_episodes(tmp_path):
    kill_rounds(tmp_path / "s.zarr", rounds=3, seed=0)


def test_second_appending_process_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    proc = start_writer(path, "forever")
    try:
        assert proc.stdout.readline().startswith("committed"), proc.stderr.read()
        with pytest.raises(StoreError, match="another process has this store open for appending"):
            EpisodeStore.open(path, mode="a")
        assert EpisodeStore.open(path, mode="r").n_episodes >= 1  # readers are never blocked
    finally:
        proc.kill()
        proc.communicate()
    EpisodeStore.open(path, mode="a")  # the kernel dropped the dead writer's lock


@pytest.mark.slow
def test_sigkill_many_rounds(tmp_path):
    # the writer spends most of its time inside append_episode, so most kills land mid-append
    assert kill_rounds(tmp_path / "s.zarr", rounds=25, seed=1) >= 5


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_commit_finishes_the_commit(tmp_path, sig):
    path = tmp_path / "s.zarr"
    st = EpisodeStore.create(path)
    st.append_episode(crash_writer.make_episode(0), crash_writer.make_meta(0))
    st.close()  # release the append lock for the writer process
    proc = start_writer(path, "big")
    line = proc.stdout.readline()
    assert line == "begin 1\n", proc.stderr.read()
    # signal once the append is visibly under way (first data array resized on disk): the append of a
    # 2000-frame image episode then still has ~100 ms to go
    meta_json = path / "data" / "robot_joint_pos" / "zarr.json"
    deadline = time.monotonic() + 30
    while json.loads(meta_json.read_text())["shape"][0] == 5:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.0005)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        assert out.strip() == "interrupted 2"  # the commit finished, then KeyboardInterrupt was raised
    else:
        assert proc.returncode == -signal.SIGTERM  # default action, delivered after the commit
    st = check_contents(path, {1: 2000})
    assert st.n_episodes == 2


def test_file_size_limit_raises_store_error_and_keeps_episodes(tmp_path):
    path = tmp_path / "s.zarr"
    # per-file limit 512 kB: 60 frames of 32x32x3 random images (184 kB chunk) fit, 460 frames (1.4 MB) do not
    proc = start_writer(path, "fsize", str(512 * 1024))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("StoreError:"), out
    assert str(path) in lines[0] and "episode 3" in lines[0] and "intact" in lines[0]
    assert "File too large" in lines[0] or "EFBIG" in lines[0] or "Errno 27" in lines[0]
    assert lines[1] == "committed 4"
    st = check_contents(path, {0: 20, 1: 20, 2: 20, 3: 20})
    assert st.n_episodes == 4
    # without the limit the store takes the large episode
    st = EpisodeStore.open(path, mode="a")
    st.append_episode(crash_writer.make_episode(4, 400), crash_writer.make_meta(4))
    check_contents(path, {0: 20, 1: 20, 2: 20, 3: 20, 4: 400})


def test_sigint_outside_commit_is_not_swallowed():
    # deferred_signals restores the previous handler: a Ctrl-C outside an append behaves normally
    from robotstack.data.store import deferred_signals

    with deferred_signals():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # delivered to the deferring handler here, raised when the block ends
