"""robotstack.core.rotations: known values, round trips, and the one-copy rule (the old homes import it)."""

import numpy as np
import pytest

from robotstack.core import rotations as rot


def random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    return rot.quat_to_mat(q / np.linalg.norm(q))


def test_known_values():
    np.testing.assert_allclose(rot.rot_z(np.pi / 2) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(rot.rot_x(np.pi / 2) @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    h = np.sqrt(0.5)
    np.testing.assert_allclose(rot.yaw_to_quat(np.pi / 2), [h, 0, 0, h], atol=1e-12)
    np.testing.assert_allclose(rot.mat_to_quat(rot.rot_z(np.pi / 2)), [h, 0, 0, h], atol=1e-12)
    np.testing.assert_allclose(rot.rotvec_to_quat([0, 0, np.pi / 2]), [h, 0, 0, h], atol=1e-12)
    np.testing.assert_allclose(rot.rotvec_to_quat([0, 0, 0]), [1, 0, 0, 0])
    np.testing.assert_allclose(rot.rpy_to_quat(0, 0, np.pi / 2), [h, 0, 0, h], atol=1e-12)
    np.testing.assert_allclose(rot.quat_to_mat([1, 0, 0, 0]), np.eye(3))
    assert rot.wrap_angle(3 * np.pi / 2) == pytest.approx(-np.pi / 2)
    assert rot.wrap_angle(-0.3) == pytest.approx(-0.3)


@pytest.mark.parametrize("R", [np.eye(3), np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]),
                               np.diag([-1.0, -1.0, 1.0])], ids=["trace>0", "x", "y", "z"])
def test_mat_to_quat_every_branch_round_trips(R):
    R = R @ rot.rot_z(1e-3) @ rot.rot_x(-2e-3)  # off the exact axes, still in the same branch
    q = rot.mat_to_quat(R)
    assert q[0] >= 0 and np.linalg.norm(q) == pytest.approx(1.0)
    np.testing.assert_allclose(rot.quat_to_mat(q), R, atol=1e-12)


def test_random_round_trips_and_yaw_agree():
    rng = np.random.default_rng(0)
    for _ in range(200):
        R = random_rotation(rng)
        q = rot.mat_to_quat(R)
        np.testing.assert_allclose(rot.quat_to_mat(q), R, atol=1e-12)
        assert rot.quat_yaw(q) == pytest.approx(rot.mat_yaw(R), abs=1e-9)
        np.testing.assert_allclose(rot.quat_xyzw_to_wxyz(rot.quat_wxyz_to_xyzw(q)), q)
        roll, pitch, yaw = rng.uniform(-np.pi, np.pi), rng.uniform(-1.5, 1.5), rng.uniform(-np.pi, np.pi)
        R_rpy = rot.rot_z(yaw) @ rot.quat_to_mat(rot.rotvec_to_quat([0, pitch, 0])) @ rot.rot_x(roll)
        np.testing.assert_allclose(rot.quat_to_mat(rot.rpy_to_quat(roll, pitch, yaw)), R_rpy, atol=1e-12)
        assert rot.quat_yaw(rot.rpy_to_quat(roll, pitch, yaw)) == pytest.approx(yaw, abs=1e-9)
        y = rng.uniform(-np.pi, np.pi)
        assert rot.quat_yaw(rot.yaw_to_quat(y)) == pytest.approx(y, abs=1e-12)
        assert rot.mat_yaw(rot.rot_z(y)) == pytest.approx(y, abs=1e-12)


def test_former_homes_define_no_rotation_helpers():
    """The five former homes of these helpers define none of them (one implementation, nothing to drift)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    helpers = {n for n in dir(rot) if not n.startswith("_") and callable(getattr(rot, n))} | {"rot_to_quat"}
    for rel in ("robotstack/core/kinematics.py", "hardware/servo.py", "hardware/drivers/base.py",
                "sim/tasks/common.py", "sim/panda_scene.py"):
        tree = ast.parse((root / rel).read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        defined |= {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets
                    if isinstance(t, ast.Name)}
        assert not defined & helpers, f"{rel} redefines {sorted(defined & helpers)}"
