"""Franka Panda kinematics in pure numpy: forward kinematics, geometric Jacobian, damped-least-squares IK.

No mujoco import on purpose: the hardware layer reuses this module on the robot side.

Frames follow the official Panda chain (Craig's modified DH, identical to the pybullet_data / franka_ros URDF):
base = panda_link0, flange = panda_link8 (0.107 m past joint 7), hand = flange rotated -45 deg about z,
TCP = hand + 0.1034 m along z (Franka's default TCP, centred between the fingertip pads).
All positions are metres in the robot base frame; quaternions are (w, x, y, z).

Glossary: Dq = 7 arm joints.
"""

from __future__ import annotations

import math

import numpy as np

from robotstack.core.rotations import mat_yaw, rot_x, rot_z

NAME = "panda"  # the kinematics name manifests and arm servers declare when this module applies

# --- model constants ---------------------------------------------------------------------------------
# modified DH rows (a_{i-1}, d_i, alpha_{i-1}) for joints 1..7, then the fixed flange row
DH = np.array(
    [
        [0.0, 0.333, 0.0],
        [0.0, 0.0, -np.pi / 2],
        [0.0, 0.316, np.pi / 2],
        [0.0825, 0.0, np.pi / 2],
        [-0.0825, 0.384, -np.pi / 2],
        [0.0, 0.0, np.pi / 2],
        [0.088, 0.0, np.pi / 2],
    ]
)
FLANGE_D = 0.107
HAND_YAW = -np.pi / 4  # panda_hand_joint rpy
TCP_OFFSET = 0.1034  # hand origin -> TCP along hand z

# URDF hard limits (rad). IK keeps a small margin inside them.
JOINT_LOWER = np.array([-2.9671, -1.8326, -2.9671, -3.1416, -2.9671, -0.0873, -2.9671])
JOINT_UPPER = np.array([2.9671, 1.8326, 2.9671, 0.0, 2.9671, 3.8223, 2.9671])
JOINT_LIMIT_MARGIN = 0.05
# Franka Panda datasheet velocity / acceleration limits (the drivers' ArmInfo; the servo and the sim's servo arm)
DQ_MAX = np.array([2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61])
DDQ_MAX = np.array([15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0])
_LO = JOINT_LOWER + JOINT_LIMIT_MARGIN
_HI = JOINT_UPPER - JOINT_LIMIT_MARGIN
FINGER_MAX = 0.04  # per finger joint (m); opening = sum of both

# gripper pointing down, fingers opening along world y: "yaw 0" in solve_ik
HOME_Q = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 1.9, np.pi / 4])


_ALPHA_ROT = [rot_x(alpha) for alpha in DH[:, 2]]
_HAND_ROT = rot_z(HAND_YAW)
_DH_A = [float(v) for v in DH[:, 0]]
_DH_D = [float(v) for v in DH[:, 1]]
_DH_SA = [float(np.round(np.sin(v))) for v in DH[:, 2]]
_HAND_C, _HAND_S = float(np.cos(HAND_YAW)), float(np.sin(HAND_YAW))


def forward_kinematics(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """q (Dq,) -> (joint_pos (7, 3), joint_axis (7, 3), tcp_pos (3,), tcp_rot (3, 3)), all in the base frame.

    joint_pos[i] / joint_axis[i] are the origin and z axis of link i+1 (the frame joint i+1 turns about).
    Written with Python floats on the frame columns: every alpha is 0 or +-pi/2, so the alpha rotation is a
    column swap, and this is ~5x faster than chaining small numpy matrices (it runs every control step).
    """
    xs, ys, zs = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]  # frame columns
    p = [0.0, 0.0, 0.0]
    jp, ja = [], []
    for i in range(7):
        a, d, sa = _DH_A[i], _DH_D[i], _DH_SA[i]
        # translate a along the previous x, then rotate about it by alpha (sa = sin(alpha), cos is 0 or 1)
        if sa > 0:
            ys, zs = zs, [-v for v in ys]
        elif sa < 0:
            ys, zs = [-v for v in zs], ys
        p = [p[k] + xs[k] * a + zs[k] * d for k in range(3)]
        c, s = math.cos(q[i]), math.sin(q[i])
        xs, ys = [c * xs[k] + s * ys[k] for k in range(3)], [c * ys[k] - s * xs[k] for k in range(3)]
        jp.append(p)
        ja.append(zs)
    # hand frame: flange rotated by HAND_YAW about z
    c, s = _HAND_C, _HAND_S
    xh = [c * xs[k] + s * ys[k] for k in range(3)]
    yh = [c * ys[k] - s * xs[k] for k in range(3)]
    off = FLANGE_D + TCP_OFFSET  # hand z == flange z
    tcp = np.array([p[k] + zs[k] * off for k in range(3)])
    R_hand = np.array([xh, yh, zs]).T
    return np.array(jp), np.array(ja), tcp, R_hand


def link_poses(q: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Named frame poses (pos, rot) for tests against other engines: panda_link1..7, panda_hand, tcp."""
    q = np.asarray(q, dtype=np.float64)
    R = np.eye(3)
    p = np.zeros(3)
    out = {}
    for i in range(7):
        a, d, _ = DH[i]
        Ra = R @ _ALPHA_ROT[i]
        p = p + R[:, 0] * a + Ra[:, 2] * d
        R = Ra @ rot_z(q[i])
        out[f"panda_link{i + 1}"] = (p.copy(), R.copy())
    p_flange = p + R[:, 2] * FLANGE_D
    R_hand = R @ _HAND_ROT
    out["panda_hand"] = (p_flange, R_hand)
    out["tcp"] = (p_flange + R_hand[:, 2] * TCP_OFFSET, R_hand)
    return out


def jacobian(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Geometric TCP Jacobian: q -> (J (6, 7) rows [v; w], tcp_pos (3,), tcp_rot (3, 3))."""
    joint_pos, joint_axis, tcp, R = forward_kinematics(q)
    r = (tcp - joint_pos).T  # (3, 7) lever arms
    a = joint_axis.T
    J = np.empty((6, 7))
    J[0] = a[1] * r[2] - a[2] * r[1]  # rows of axis x lever (np.cross is slow on tiny arrays)
    J[1] = a[2] * r[0] - a[0] * r[2]
    J[2] = a[0] * r[1] - a[1] * r[0]
    J[3:] = a
    return J, tcp, R


def down_rotation(yaw: float) -> np.ndarray:
    """TCP orientation pointing straight down (z = -world z), rotated by yaw about world z.

    yaw = 0 puts the finger axis (hand y) along world y, i.e. the fingers close along y.
    """
    base = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])  # x fwd, y flipped, z down
    return rot_z(yaw) @ base


def tcp_yaw(R: np.ndarray) -> float:
    """Yaw of a (roughly down-pointing) TCP rotation, the inverse of down_rotation."""
    return mat_yaw(R)


def _rot_error(R_cur: np.ndarray, R_des: np.ndarray) -> np.ndarray:
    """Small-angle rotation error (world frame) taking R_cur to R_des."""
    E = R_des @ R_cur.T
    return 0.5 * np.array([E[2, 1] - E[1, 2], E[0, 2] - E[2, 0], E[1, 0] - E[0, 1]])


def solve_ik(
    q_current: np.ndarray,
    target_pos: np.ndarray,
    target_yaw: float | None = None,
    *,
    iters: int = 3,
    damping: float = 0.03,
    rot_weight: float = 0.5,
    nullspace_gain: float = 0.05,
    q_rest: np.ndarray | None = None,
    tol: float = 2e-4,
    stall_m: float | None = None,
) -> np.ndarray:
    """Damped-least-squares IK for the TCP, gripper pointing down.

    q_current (Dq,) warm start; target_pos (3,) base frame; target_yaw rad about world z (None: keep the
    current yaw, only the pointing-down constraint is enforced). A small null-space pull toward q_rest keeps the
    elbow in a familiar posture. Returns q_target (Dq,) clipped inside the joint limits (minus a margin).
    A few iterations suffice when warm-started from the previous solution (targets move <= a few cm/step);
    run it to convergence (iters ~ 50) for a cold start.
    stall_m: also stop once the position error is below this (m) and no longer shrinks by half an iteration: the
    null-space pull and the damping balance at an error near ``tol`` for some poses, and the remaining iterations
    only drift the elbow (the servo solves Cartesian targets on its 1 kHz thread with this; None = off, as the sim).
    """
    q = np.minimum(np.maximum(np.asarray(q_current, dtype=np.float64), _LO), _HI)
    rest = HOME_Q if q_rest is None else np.asarray(q_rest, dtype=np.float64)
    target_pos = np.asarray(target_pos, dtype=np.float64)
    R_des = None if target_yaw is None else down_rotation(target_yaw)
    W = np.array([1.0, 1.0, 1.0, rot_weight, rot_weight, rot_weight])
    diag = np.diag_indices(6)
    lam2 = damping**2
    tol2 = tol * tol
    prev2 = np.inf
    for _ in range(iters):
        J, p, R = jacobian(q)
        err = np.empty(6)
        err[:3] = target_pos - p
        err[3:] = _rot_error(R, down_rotation(tcp_yaw(R)) if R_des is None else R_des)
        e2 = err[:3] @ err[:3]
        if e2 < tol2 and err[3:] @ err[3:] < 25 * tol2:
            break
        if stall_m is not None and e2 < stall_m * stall_m and e2 > 0.25 * prev2:
            break
        prev2 = e2
        Jw = J * W[:, None]
        A = Jw @ Jw.T
        A[diag] += lam2
        # one solve gives the DLS step and the damped pseudo-inverse for the null-space projector
        rhs = np.empty((6, 8))
        rhs[:, 0] = err * W
        rhs[:, 1:] = Jw
        X = np.linalg.solve(A, rhs)
        dq = Jw.T @ X[:, 0]
        posture = nullspace_gain * (rest - q)
        dq += posture - Jw.T @ (X[:, 1:] @ posture)
        q = np.minimum(np.maximum(q + dq, _LO), _HI)
    return q
