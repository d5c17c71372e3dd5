"""Fixtures for runtime fault tests: real arm-server processes on loopback, real exporter artifacts (tiny
untrained policies exported by robotstack.export, so the production artifact path is the tested path)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hardware.protocol.transport import free_base_port

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


class ServerProc:
    def __init__(self, task: str = "reach", keys: str = "", extra=(), driver: str = "pybullet"):
        self.port = free_base_port()
        self.addr = f"tcp://127.0.0.1:{self.port}"
        cmd = [PY, "-m", "robotstack.cli", "serve-arm", "--driver", driver, "--task", task, "--bind", self.addr,
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
def reach_spec():
    import sim

    env = sim.make("reach")
    try:
        return env.unwrapped.task_spec()
    finally:
        env.close()


def _const(dx: float) -> list[tuple[float, float]]:
    """Action range of a policy that pushes dx along x (+-0.01 jitter), keeps y and z, gripper open."""
    return [(dx - 0.01, dx + 0.01), (-0.01, 0.01), (-0.01, 0.01), (-1.0, -1.0)]


@pytest.fixture(scope="session")
def policies(tmp_path_factory, reach_spec):
    """Artifacts written by robotstack.export.onnx_export.export_artifact from tiny untrained DiffusionPolicies."""
    from robotstack.export.tiny import export_tiny

    root = tmp_path_factory.mktemp("policies")
    mismatch_spec = dict(reach_spec, robot={"dof": 6, "kinematics": "panda"})
    return {
        "plus_x": export_tiny(root / "plus_x", reach_spec, action_range=_const(0.5)),
        "minus_x": export_tiny(root / "minus_x", reach_spec, action_range=_const(-0.5)),
        "slow_x": export_tiny(root / "slow_x", reach_spec, action_range=_const(0.1)),
        # back towards the base and down: into the pocket above the base that a pointing-down hand cannot reach
        "back_down": export_tiny(root / "back_down", reach_spec,
                                 action_range=[(-0.51, -0.49), (-0.01, 0.01), (-0.51, -0.49), (-1.0, -1.0)]),
        # a corrupt normalizer stat (NaN action offset) in the checkpoint: the exported graph yields NaN actions
        "nan": export_tiny(root / "nan", reach_spec, poison=True),
        # exported for a 6-joint arm, with observations the reach arm does not provide in these shapes
        "mismatch": export_tiny(root / "mismatch", mismatch_spec,
                                obs_shapes={"robot_eef_pos": (3,), "robot_joint_pos": (6,), "object_state": (9,)}),
        # the reach contract but trained for another arm's kinematics (what a Meta-World / Sawyer export declares)
        "sawyer": export_tiny(root / "sawyer", dict(reach_spec, robot={"dof": 7, "kinematics": "sawyer"})),
    }
