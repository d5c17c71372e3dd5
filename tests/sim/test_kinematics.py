"""robotstack.core.kinematics against MuJoCo on the loaded pybullet_data Panda URDF."""

import mujoco
import numpy as np
import pytest

from robotstack.core import kinematics as kin
from robotstack.core import rotations as rot
from sim import panda_scene as ps


@pytest.fixture(scope="module")
def panda():
    model = ps.build_panda_scene().compile()
    return model, mujoco.MjData(model), ps.PandaHandles.from_model(model)


def test_fk_matches_mujoco_bodies_and_tcp_site(panda):
    model, data, h = panda
    rng = np.random.default_rng(0)
    for _ in range(30):
        q = rng.uniform(kin.JOINT_LOWER, kin.JOINT_UPPER)
        data.qpos[h.arm_qpos] = q
        mujoco.mj_kinematics(model, data)
        for name, (p, R) in kin.link_poses(q).items():
            if name == "tcp":
                pm, Rm = data.site_xpos[h.tcp_site], data.site_xmat[h.tcp_site].reshape(3, 3)
            else:
                b = model.body(ps.PREFIX + name).id
                pm, Rm = data.xpos[b], data.xmat[b].reshape(3, 3)
            assert np.linalg.norm(p - pm) < 1e-3, name  # < 1 mm (observed ~1e-6: MJCF text rounding)
            assert np.abs(R - Rm).max() < 1e-3, name
        _, _, tcp, R = kin.forward_kinematics(q)
        np.testing.assert_allclose(tcp, kin.link_poses(q)["tcp"][0], atol=1e-12)


def test_jacobian_matches_finite_differences():
    rng = np.random.default_rng(1)
    q = rng.uniform(kin.JOINT_LOWER, kin.JOINT_UPPER)
    J, p0, _ = kin.jacobian(q)
    eps = 1e-6
    for i in range(7):
        dq = np.zeros(7)
        dq[i] = eps
        p1 = kin.forward_kinematics(q + dq)[2]
        np.testing.assert_allclose((p1 - p0) / eps, J[:3, i], atol=1e-5)


def test_jacobian_matches_mujoco(panda):
    model, data, h = panda
    q = np.array([0.3, -0.5, 0.2, -2.0, 0.4, 1.8, 0.1])
    data.qpos[h.arm_qpos] = q
    mujoco.mj_forward(model, data)
    jacp, jacr = np.zeros((3, model.nv)), np.zeros((3, model.nv))
    mujoco.mj_jacSite(model, data, jacp, jacr, h.tcp_site)
    J = kin.jacobian(q)[0]
    np.testing.assert_allclose(J[:3], jacp[:, h.arm_dof], atol=1e-5)
    np.testing.assert_allclose(J[3:], jacr[:, h.arm_dof], atol=1e-5)


@pytest.mark.parametrize("yaw", [None, 0.0, 0.8, -1.2])
def test_ik_reaches_targets_pointing_down_within_limits(yaw):
    rng = np.random.default_rng(2)
    for _ in range(10):
        target = rng.uniform([0.3, -0.3, 0.02], [0.7, 0.3, 0.4])
        q = kin.solve_ik(kin.HOME_Q, target, yaw, iters=100)
        _, _, p, R = kin.forward_kinematics(q)
        assert np.linalg.norm(p - target) < 1e-3
        assert R[2, 2] < -0.999  # tool z points down
        if yaw is not None:
            assert abs(kin.tcp_yaw(R) - yaw) < 1e-2
        assert np.all(q >= kin.JOINT_LOWER) and np.all(q <= kin.JOINT_UPPER)


def test_ik_clamps_unreachable_target_to_limits():
    q = kin.solve_ik(kin.HOME_Q, [2.0, 0.0, 0.5], 0.0, iters=50)
    assert np.all(np.isfinite(q))
    assert np.all(q >= kin.JOINT_LOWER) and np.all(q <= kin.JOINT_UPPER)


def test_rotations_match_mujoco_wxyz_convention():
    """core.rotations speaks MuJoCo's (w, x, y, z): same quaternions, matrices and yaw as mju_* on random input."""
    rng = np.random.default_rng(2)
    for R in [kin.down_rotation(0.7)] + [rot.quat_to_mat(q / np.linalg.norm(q)) for q in rng.normal(size=(50, 4))]:
        qm = np.zeros(4)
        mujoco.mju_mat2Quat(qm, R.flatten())
        qm = qm if qm[0] >= 0 else -qm
        np.testing.assert_allclose(rot.mat_to_quat(R), qm, atol=1e-9)
        Rm = np.zeros(9)
        mujoco.mju_quat2Mat(Rm, qm)
        np.testing.assert_allclose(rot.quat_to_mat(qm), Rm.reshape(3, 3), atol=1e-12)
    np.testing.assert_allclose(kin.tcp_yaw(kin.down_rotation(0.7)), 0.7, atol=1e-12)
    assert rot.quat_yaw(rot.mat_to_quat(kin.down_rotation(-1.2))) == pytest.approx(-1.2)


def test_ik_stall_exit_stops_where_damping_and_posture_balance():
    """For some poses the damped step and the null-space pull balance ~0.21 mm from the target, just above tol: the
    plain solver then spends every remaining iteration drifting the elbow. stall_m (the servo's Cartesian targets)
    stops there, within the bound."""
    q0 = np.array([-0.2755, 0.5947, -0.0823, -1.7923, 0.0669, 2.3843, 0.3931])  # from a reach run on the arm
    target = np.array([0.6251, -0.2327, 0.1081])
    plain = [kin.solve_ik(q0, target, -2e-5, iters=k) for k in (29, 30)]
    assert not np.array_equal(*plain)  # still moving after 29 iterations
    stalled = [kin.solve_ik(q0, target, -2e-5, iters=k, stall_m=1e-3) for k in (4, 30)]
    np.testing.assert_array_equal(*stalled)  # stopped by iteration 4
    assert np.linalg.norm(kin.forward_kinematics(stalled[1])[2] - target) < 1e-3
