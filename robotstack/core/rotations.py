"""Rotation and quaternion helpers (pure numpy), written once for sim, hardware and the runtime.

Convention: quaternions are (w, x, y, z), scalar first, as MuJoCo and the observation keys use them
(``robot_eef_quat``, the object poses in ``object_state``). Vendor SDKs that speak scalar-last (x, y, z, w)
(pybullet, panda_py) convert at their driver with ``quat_xyzw_to_wxyz`` / ``quat_wxyz_to_xyzw``.
Rotation matrices are 3x3, active, column vectors (``p_world = R @ p_body``). Angles are radians; "yaw" is the
rotation about world z (the heading of the body x axis in the xy plane).
"""

from __future__ import annotations

import numpy as np


def rot_x(a: float) -> np.ndarray:
    """Rotation by a about x."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_z(a: float) -> np.ndarray:
    """Rotation by a about z."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def wrap_angle(a: float) -> float:
    """Angle wrapped into [-pi, pi)."""
    return float((a + np.pi) % (2 * np.pi) - np.pi)


def mat_to_quat(R: np.ndarray) -> np.ndarray:
    """3x3 rotation -> unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method: stable for any R)."""
    R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    t = np.trace(R)
    if t > 0:
        s = np.sqrt(t + 1.0) * 2
        q = np.array([0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s])
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2]) * 2
        q = np.array([(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s])
    elif R[1, 1] > R[2, 2]:
        s = np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2]) * 2
        q = np.array([(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s])
    else:
        s = np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1]) * 2
        q = np.array([(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s])
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def quat_to_mat(q) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> 3x3 rotation (the caller normalizes; a non-unit q gives a non-rotation)."""
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def yaw_to_quat(yaw: float) -> np.ndarray:
    """Rotation by yaw about world z as (w, x, y, z)."""
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def quat_yaw(q) -> float:
    """Yaw (rad about world z) of a (w, x, y, z) quaternion: the z angle of its z-y-x Euler decomposition."""
    w, x, y, z = q
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def mat_yaw(R: np.ndarray) -> float:
    """Yaw of a rotation matrix: heading of its x axis in the world xy plane (same angle as quat_yaw)."""
    return float(np.arctan2(R[1, 0], R[0, 0]))


# the hand pointing down at yaw 0 (kinematics.down_rotation(0) = 180 deg about x), (w, x, y, z)
TCP_QUAT_REF = np.array([0.0, 1.0, 0.0, 0.0])


def canonical_tcp_quat(q) -> np.ndarray:
    """The sign of q (q and -q are one rotation) nearest TCP_QUAT_REF: continuous for a down-pointing hand over
    yaw in (-pi, pi). A plain matrix -> quaternion conversion (MuJoCo's mju_mat2Quat, ours) flips the sign at yaw
    -pi/2, inside the action contract's +-1.6 rad, so a policy saw a 1.4 jump in ``robot_eef_quat`` for a 0.15 rad
    turn. Within |yaw| < pi/2 it equals that conversion, so data recorded there is unchanged."""
    q = np.asarray(q)
    return -q if float(q @ TCP_QUAT_REF) < 0 else q


def quat_xyzw_to_wxyz(q) -> np.ndarray:
    x, y, z, w = q
    return np.array([w, x, y, z], dtype=np.float64)


def quat_wxyz_to_xyzw(q) -> np.ndarray:
    w, x, y, z = q
    return np.array([x, y, z, w], dtype=np.float64)


def rotvec_to_quat(rv) -> np.ndarray:
    """Axis-angle (rx, ry, rz), as UR reports TCP orientation, -> quaternion (w, x, y, z)."""
    rv = np.asarray(rv, dtype=np.float64)
    angle = float(np.linalg.norm(rv))
    if angle < 1e-12:
        return np.array([1.0, 0.0, 0.0, 0.0])
    axis = rv / angle
    return np.concatenate([[np.cos(angle / 2)], axis * np.sin(angle / 2)])


def rpy_to_quat(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Fixed-axis roll/pitch/yaw (R = Rz(yaw) Ry(pitch) Rx(roll)), as xArm reports it -> (w, x, y, z)."""
    cr, sr = np.cos(roll / 2), np.sin(roll / 2)
    cp, sp = np.cos(pitch / 2), np.sin(pitch / 2)
    cy, sy = np.cos(yaw / 2), np.sin(yaw / 2)
    return np.array([cr * cp * cy + sr * sp * sy, sr * cp * cy - cr * sp * sy,
                     cr * sp * cy + sr * cp * sy, cr * cp * sy - sr * sp * cy])
