"""Smoke tests of the recording/data CLI entry points, run as real processes like a user would."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robotstack.data.store import EpisodeStore

ROBOTSTACK = [sys.executable, "-m", "robotstack.cli"]
ENV = {**os.environ, "MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"}


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*ROBOTSTACK, *args], capture_output=True, text=True, env=ENV, timeout=240)
    if check and proc.returncode != 0:
        raise AssertionError(f"robotstack {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc


def test_record_info_merge(tmp_path):
    a, b, c = (str(tmp_path / n) for n in ("a.zarr", "b.zarr", "c.zarr"))
    out = run("record", "--task", "reach", "--episodes", "3", "--out", a, "--quiet").stdout
    assert "saved 3 episodes" in out
    run("record", "--task", "reach", "--episodes", "2", "--out", b, "--seed", "10", "--zarr-format", "2",
        "--noise", "0.3", "--quiet")
    info = run("data", "info", a).stdout
    assert "episodes" in info and "robot_joint_pos" in info and "late ticks" in info
    run("data", "merge", a, b, "--out", c)
    merged = EpisodeStore.open(c)
    assert merged.n_episodes == 5
    assert [merged.episode_meta(i).seed for i in range(5)] == [0, 1, 2, 10, 11]
    np.testing.assert_array_equal(merged.episode(3)["action"], EpisodeStore.open(b).episode(0)["action"])


def test_record_appends_to_existing_store(tmp_path):
    path = str(tmp_path / "s.zarr")
    run("record", "--task", "reach", "--episodes", "1", "--out", path, "--quiet")
    run("record", "--task", "reach", "--episodes", "2", "--out", path, "--seed", "5", "--quiet")
    assert EpisodeStore.open(path).n_episodes == 3


def test_bad_inputs_are_clear_errors(tmp_path):
    proc = run("record", "--task", "fly", "--episodes", "1", "--out", str(tmp_path / "x.zarr"), check=False)
    assert proc.returncode == 2 and "unknown task 'fly'" in proc.stderr
    proc = run("data", "info", str(tmp_path / "missing.zarr"), check=False)
    assert proc.returncode == 2 and "missing.zarr" in proc.stderr
    (tmp_path / "notzarr").mkdir()
    proc = run("data", "info", str(tmp_path / "notzarr"), check=False)
    assert proc.returncode == 2 and "notzarr" in proc.stderr
    proc = run("record", "--task", "reach", "--device", "spacemouse", "--out", str(tmp_path / "y.zarr"),
               check=False)
    assert proc.returncode == 2 and "spacemouse" in proc.stderr.lower()


def test_kill_9_mid_recording_keeps_saved_episodes(tmp_path):
    path = tmp_path / "kill.zarr"
    proc = subprocess.Popen([*ROBOTSTACK, "record", "--task", "reach", "--episodes", "10000", "--out", str(path),
                             "--quiet"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ends = path / "meta" / "episode_ends"
            if ends.exists():
                try:
                    if EpisodeStore.open(path).n_episodes >= 3:
                        break
                except Exception:  # store mid-creation
                    pass
            time.sleep(0.05)
        else:
            pytest.fail("recording never reached 3 episodes")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = EpisodeStore.open(path, mode="a")  # append-mode open trims any half-written rows
    n = store.n_episodes
    assert n >= 3
    for i in range(n):
        ep = store.episode(i)
        assert len(ep["action"]) == store.episode_slice(i).stop - store.episode_slice(i).start
        assert store.episode_meta(i).seed == i
    assert store.verify() == []


def test_keyboard_recording_through_a_terminal(tmp_path):
    """A person's session over a real pty: start, drive, save one episode, quit."""
    path = tmp_path / "human.zarr"
    view = tmp_path / "view.png"
    pid, fd = pty.fork()
    if pid == 0:  # child: the CLI with the pty as its terminal
        os.execvpe(sys.executable, [*ROBOTSTACK, "record", "--task", "reach", "--device", "keyboard",
                                    "--episodes", "1", "--out", str(path), "--live-view", str(view)], ENV)
    output = b""

    def read_until(text: bytes, timeout: float = 90) -> None:
        nonlocal output
        end = time.monotonic() + timeout
        while text not in output and time.monotonic() < end:
            try:
                output += os.read(fd, 4096)
            except OSError:
                break
        assert text in output, output.decode(errors="replace")[-2000:]

    read_until(b"press Enter")
    os.write(fd, b"\r")
    read_until(b"recording episode")
    for _ in range(10):
        os.write(fd, b"w")
        time.sleep(0.05)
    os.write(fd, b"\r")
    read_until(b"saved 1 episodes")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store = EpisodeStore.open(path)
    assert store.n_episodes == 1 and store.episode_meta(0).source == "human"
    actions = store.episode(0)["action"]
    assert (actions[:, 0] > 0).any(), "the 'w' key should have driven +x"
    assert view.exists()
