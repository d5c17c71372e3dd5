"""Fixtures for runtime fault tests: real arm-server processes on loopback, ONNX test policies."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
sys.path.insert(0, str(Path(__file__).parent))

from onnx_policies import build_policy  # noqa: E402


def free_base_port() -> int:
    """A base port whose +1 and +2 are free too."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base > 65000:
            continue
        ok = True
        for p in (base + 1, base + 2):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return base
    raise RuntimeError("no free port triple")


class ServerProc:
    def __init__(self, task: str = "reach", keys: str = "", extra=()):
        self.port = free_base_port()
        self.addr = f"tcp://127.0.0.1:{self.port}"
        cmd = [PY, "-m", "robotstack.cli", "serve-arm", "--driver", "pybullet", "--task", task, "--bind", self.addr,
               "--scenes", "20", *extra]
        if keys:
            cmd += ["--keys", keys]
        env = {**os.environ, "MUJOCO_GL": "egl", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env)
        self.lines: list[str] = []
        deadline = time.monotonic() + 30
        for line in self.proc.stdout:
            self.lines.append(line)
            if "ready" in line:
                break
            if time.monotonic() > deadline:
                break
        else:
            raise RuntimeError("arm server died at start:\n" + "".join(self.lines))
        os.set_blocking(self.proc.stdout.fileno(), False)

    def output(self) -> str:
        try:
            more = self.proc.stdout.read()
        except (TypeError, OSError):
            more = None
        if more:
            self.lines.append(more)
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def server():
    s = ServerProc()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def shared_server():
    s = ServerProc()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def policies(tmp_path_factory):
    root = tmp_path_factory.mktemp("policies")
    return {
        "reach": build_policy(root / "reach", "reach"),
        "plus_x": build_policy(root / "plus_x", "const", const=[0.5, 0.0, 0.0, -1.0]),
        "minus_x": build_policy(root / "minus_x", "const", const=[-0.5, 0.0, 0.0, -1.0]),
        "slow_x": build_policy(root / "slow_x", "const", const=[0.1, 0.0, 0.0, -1.0]),
        "nan": build_policy(root / "nan", "nan"),
        "mismatch": build_policy(root / "mismatch", "const", obs_keys={"robot_eef_pos": [3], "image_front": [96, 96, 3],
                                                                       "object_state": [7]}, dof=6),
    }
