"""Arm drivers: real pybullet and MuJoCo physics, and the vendor adapters against fake SDK modules.

The UR (ur-rtde), xArm (xarm-python-sdk) and Franka (panda-python) adapters have NEVER been run on a physical
arm: here each is driven through the ArmDriver interface against a small fake of its SDK injected through
sys.modules, which checks the calls we make and the unit conversions, not the vendor's behaviour.
"""

from __future__ import annotations

import sys
import time
import types

import numpy as np
import pytest

from hardware.drivers import ArmDriver, DriverError, make_driver
from robotstack.core.rotations import mat_to_quat, rotvec_to_quat, rpy_to_quat
from hardware.servo import ServoConfig, ServoCore, ServoLoop, ServoTarget
from robotstack.core import keys
from robotstack.core import kinematics as kin
from robotstack.core.errors import ConfigError, DeviceUnavailableError
from robotstack.core.ee_action import GRIPPER_OPEN, per_finger_opening

SEC = 1_000_000_000
CUBE = {"name": "cube", "shape": "box", "size": [0.02, 0.02, 0.02], "pose": [0.5, 0.0, 0.021], "mass": 0.1,
        "friction": 1.0, "rgba": [0.85, 0.15, 0.15, 1]}
T_BLOCK = {"name": "tblock", "shape": "compound", "pose": [0.45, 0.25, 0.016], "mass": 0.2, "friction": 0.8,
           "rgba": [0.25, 0.45, 0.85, 1],
           "parts": [{"shape": "box", "size": [0.08, 0.02, 0.015], "pos": [0.0, 0.05, 0.0]},
                     {"shape": "box", "size": [0.02, 0.06, 0.015], "pos": [0.0, -0.01, 0.0]}]}
MARKER = {"name": "target", "shape": "cylinder", "size": [0.04, 0.001], "pose": [0.6, -0.2, 0.001], "mass": 0.0,
          "collide": False, "rgba": [0.1, 0.9, 0.2, 0.4]}


# --- pybullet ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pb_driver():
    driver = make_driver("pybullet", objects=[CUBE, T_BLOCK, MARKER])
    driver.connect()
    yield driver
    driver.disconnect()


def servo_for(driver, **cfg) -> ServoLoop:
    loop = ServoLoop(driver, ServoCore(driver.info, ServoConfig(**cfg)), realtime=False,
                     hook=lambda rec: rec.core.heartbeat(rec.now_ns))
    loop.core.heartbeat(0)
    return loop


def test_pybullet_describes_itself_while_disconnected():
    driver = make_driver("pybullet", objects=[CUBE, T_BLOCK, MARKER])
    assert not driver.is_connected and isinstance(driver, ArmDriver)
    info = driver.info
    assert info.dof == 7 and info.kinematics == "panda" and info.simulated
    assert info.object_names == ("cube", "tblock")  # the marker and the table are scenery
    assert info.features()[keys.OBJECT_STATE] == (14,)
    assert info.describe()["gripper_range"] == [0.0, 0.08]
    with pytest.raises(DriverError, match="not connected"):
        driver.read_state()


def test_pybullet_reaches_joint_target(pb_driver):
    pb_driver.reset()
    loop = servo_for(pb_driver)
    q_goal = kin.HOME_Q + np.array([0.3, 0.2, -0.2, 0.3, 0.3, -0.2, 0.3])
    v = loop.core.submit(ServoTarget.joint(q_goal, seq=1, sent_ns=0, expires_ns=10 * SEC, gripper=0.02), now_ns=0)
    assert v.accepted, v
    loop.run_simulated(1500)
    state = pb_driver.read_state()
    assert np.abs(state.joint_pos - q_goal).max() < 2e-3
    assert abs(state.gripper - 0.02) < 2e-3
    # the state comes from pybullet, the TCP agrees with the numpy FK of the measured joints
    assert np.linalg.norm(state.eef_pos - kin.forward_kinematics(state.joint_pos)[2]) < 1e-4


def test_pybullet_reaches_ik_cartesian_target(pb_driver):
    pb_driver.reset()
    loop = servo_for(pb_driver)
    goal = np.array([0.5, 0.12, 0.18])
    v = loop.core.submit(ServoTarget.cartesian(goal, yaw=0.3, seq=1, sent_ns=0, expires_ns=10 * SEC,
                                               target_time_ns=SEC // 2), now_ns=0)
    assert v.accepted, v
    loop.run_simulated(1500)
    state = pb_driver.read_state()
    assert np.linalg.norm(state.eef_pos - goal) < 0.005
    R = kin.down_rotation(0.3)
    q_meas = mat_to_quat(R)
    assert abs(abs(float(np.dot(q_meas, state.eef_quat))) - 1) < 1e-3  # pointing down, yaw 0.3


def test_pybullet_objects_rest_and_respond_to_contact(pb_driver):
    pb_driver.reset()
    loop = servo_for(pb_driver)
    loop.run_simulated(300)  # settle
    obj = pb_driver.read_state().object_state.reshape(2, 7)
    cube0, tblock = obj[0].copy(), obj[1]
    assert abs(cube0[2] - 0.02) < 2e-3 and np.linalg.norm(cube0[:2] - [0.5, 0.0]) < 2e-3  # resting on the table
    assert abs(tblock[2] - 0.015) < 2e-3 and abs(tblock[3]) > 0.999  # compound T-block rests flat
    # push the cube along +y with the closed fingers: come down beside it, then sweep through it
    t = loop.sim_now_ns
    waypoints = [([0.5, -0.09, 0.12], 0.6), ([0.5, -0.09, 0.025], 0.6), ([0.5, 0.06, 0.025], 1.2)]
    for seq, (p, dur) in enumerate(waypoints, start=1):
        v = loop.core.submit(ServoTarget.cartesian(p, yaw=np.pi / 2, seq=seq, sent_ns=t, expires_ns=t + 5 * SEC,
                                                   target_time_ns=t + int(dur * SEC), gripper=0.0), now_ns=t)
        assert v.accepted, v
        loop.run_simulated(int((dur + 0.2) * 1000))
        t = loop.sim_now_ns
    cube1 = pb_driver.read_state().object_state[:7]
    assert cube1[1] - cube0[1] > 0.03, (cube0, cube1)  # pushed several cm along y
    assert abs(cube1[2] - 0.02) < 5e-3  # still on the table
    reset_state = pb_driver.reset(object_poses={"cube": [0.55, 0.1, 0.021]})
    assert np.allclose(reset_state.object_state[:3], [0.55, 0.1, 0.021])
    with pytest.raises(DriverError, match="unknown object"):
        pb_driver.reset(object_poses={"nope": [0, 0, 0]})


def test_pybullet_command_is_clipped_to_hardware_range(pb_driver):
    sent = pb_driver.command_joints(kin.JOINT_UPPER + 1.0, 0.5)
    assert sent.clipped and np.allclose(sent.q, kin.JOINT_UPPER) and sent.gripper == 0.08
    with pytest.raises(DriverError, match="expected \\(7,\\)"):
        pb_driver.command_joints(np.zeros(6))
    pb_driver.reset()


def test_object_dicts_are_validated():
    with pytest.raises(ConfigError, match="unknown key"):
        make_driver("pybullet", objects=[{**CUBE, "colour": 1}])
    with pytest.raises(ConfigError, match="needs 3"):
        make_driver("pybullet", objects=[{**CUBE, "size": [0.02]}])
    with pytest.raises(ConfigError, match="duplicate"):
        make_driver("pybullet", objects=[CUBE, CUBE])


# --- kinematic (physics-free mock arm) ---------------------------------------------------------------------------
def test_kinematic_arm_follows_the_servo_and_reports_pybullets_tcp(pb_driver):
    """The ideal arm ends exactly on a joint target the servo drove it to (within its limits on the way), its
    state agrees with the PyBullet Panda at the same joints (TCP position and hand orientation), and a
    Cartesian target is reached through the servo's IK."""
    drv = make_driver("kinematic", objects=[MARKER])  # a visual-only marker is scenery, accepted
    assert isinstance(drv, ArmDriver) and drv.info.simulated and drv.info.kinematics == "panda"
    assert drv.info.object_names == () and keys.OBJECT_STATE not in drv.info.features()
    with pytest.raises(DriverError, match="not connected"):
        drv.read_state()
    drv.connect()
    drv.reset()
    loop = servo_for(drv)
    q_goal = kin.HOME_Q + np.array([0.3, 0.2, -0.2, 0.3, 0.3, -0.2, 0.3])
    v = loop.core.submit(ServoTarget.joint(q_goal, seq=1, sent_ns=0, expires_ns=10 * SEC, gripper=0.02), now_ns=0)
    assert v.accepted, v
    speeds = []
    for _ in range(1500):
        loop.run_simulated(1)
        speeds.append(np.abs(drv.read_state().joint_vel) / loop.core.v_max)
    state = drv.read_state()
    assert np.abs(state.joint_pos - q_goal).max() < 1e-6 and abs(state.gripper - 0.02) < 1e-6
    assert 0.1 < np.max(speeds) <= 1.0 + 1e-6  # it moved, never faster than the servo's velocity limit
    assert np.abs(state.joint_vel).max() < 1e-6  # at rest on the goal
    pb_driver.reset()
    loop_pb = servo_for(pb_driver)
    v = loop_pb.core.submit(ServoTarget.joint(q_goal, seq=1, sent_ns=0, expires_ns=10 * SEC), now_ns=0)
    assert v.accepted, v
    loop_pb.run_simulated(1500)
    pb_state = pb_driver.read_state()
    drv.command_joints(pb_state.joint_pos)
    drv.step(0.001)
    mine = drv.read_state()
    assert np.linalg.norm(mine.eef_pos - pb_state.eef_pos) < 1e-4
    assert abs(abs(float(np.dot(mine.eef_quat, pb_state.eef_quat))) - 1) < 1e-4
    pb_driver.reset()
    goal = np.array([0.5, 0.12, 0.18])
    t = loop.sim_now_ns
    v = loop.core.submit(ServoTarget.cartesian(goal, yaw=0.3, seq=2, sent_ns=t, expires_ns=t + 10 * SEC,
                                               target_time_ns=t + SEC // 2), now_ns=t)
    assert v.accepted, v
    loop.run_simulated(1500)
    assert np.linalg.norm(drv.read_state().eef_pos - goal) < 1e-3


def test_kinematic_arm_refuses_what_it_cannot_simulate():
    with pytest.raises(DriverError, match="dynamic object.*cube"):
        make_driver("kinematic", objects=[CUBE, MARKER])
    drv = make_driver("kinematic")
    drv.connect()
    with pytest.raises(DriverError, match="object_poses.*cube"):
        drv.reset(object_poses={"cube": [0.5, 0, 0.02]})
    sent = drv.command_joints(kin.JOINT_UPPER + 1.0, 0.5)  # the final hardware clamp, as every driver
    assert sent.clipped and np.allclose(sent.q, kin.JOINT_UPPER) and sent.gripper == 0.08
    with pytest.raises(DriverError, match="expected \\(7,\\)"):
        drv.command_joints(np.zeros(6))


# --- MuJoCo twin ------------------------------------------------------------------------------------------------
def test_mujoco_twin_over_the_training_sim():
    import sim
    from sim import panda_scene as ps

    env = sim.make("push", seed=0).unwrapped
    P = ps.PREFIX
    driver = make_driver(
        "mujoco", model=env.model, data=env.data, arm_joints=[P + j for j in ps.ARM_JOINTS],
        arm_actuators=[P + j + "_act" for j in ps.ARM_JOINTS], finger_joints=[P + j for j in ps.FINGER_JOINTS],
        finger_actuators=[P + j + "_act" for j in ps.FINGER_JOINTS], tcp_site=P + "tcp", object_bodies=["cube"],
        kinematics="panda", home_q=kin.HOME_Q,
    )
    assert driver.info.gripper_range == (0.0, 0.08) and driver.info.object_names == ("cube",)
    driver.connect()
    obs = env._get_obs()
    state = driver.read_state()
    np.testing.assert_allclose(state.joint_pos, obs[keys.JOINT_POS], atol=1e-6)
    np.testing.assert_allclose(state.object_state, obs[keys.OBJECT_STATE], atol=1e-6)
    # the one gripper unit (total opening, core/ee_action.py): reset opens fully, each finger gets half
    assert driver.reset().gripper == pytest.approx(GRIPPER_OPEN)
    assert driver.command_joints(kin.HOME_Q, 0.03).gripper == pytest.approx(0.03)
    np.testing.assert_allclose(env.data.ctrl[driver._finger_act], [per_finger_opening(0.03)] * 2)
    driver.reset()
    loop = servo_for(driver)
    q_goal = kin.HOME_Q + np.array([0.2, 0.15, -0.1, 0.2, 0.0, -0.1, 0.2])
    assert loop.core.submit(ServoTarget.joint(q_goal, seq=1, sent_ns=0, expires_ns=10 * SEC), now_ns=0).accepted
    loop.run_simulated(1200)
    state = driver.read_state()
    assert np.abs(state.joint_pos - q_goal).max() < 5e-3
    assert np.linalg.norm(state.eef_pos - kin.forward_kinematics(state.joint_pos)[2]) < 1e-3
    assert state.sim_time == pytest.approx(1.2 + 10 * env.model.opt.timestep, abs=0.01)


# --- vendor adapters against fake SDKs ----------------------------------------------------------------------------
class Calls(list):
    def names(self):
        return [c[0] for c in self]


def fake_ur_modules(calls: Calls):
    class Ctrl:
        def __init__(self, host, freq):
            calls.append(("ctrl", host, freq))

        def isConnected(self):
            return True

        def servoJ(self, q, speed, acc, t, lookahead, gain):
            calls.append(("servoJ", list(q), speed, acc, t, lookahead, gain))
            return True

        def servoStop(self):
            calls.append(("servoStop",))

        def stopScript(self):
            calls.append(("stopScript",))

        def disconnect(self):
            calls.append(("ctrl.disconnect",))

    class Recv:
        def __init__(self, host, freq):
            calls.append(("recv", host, freq))

        def isConnected(self):
            return True

        def getActualQ(self):
            return [0.1, -1.2, 1.3, -1.6, -1.5, 0.2]

        def getActualQd(self):
            return [0.0] * 6

        def getActualTCPPose(self):
            return [0.4, -0.1, 0.3, 0.0, np.pi, 0.0]

        def getTargetMoment(self):
            return [1.0] * 6

        def disconnect(self):
            calls.append(("recv.disconnect",))

    return (types.SimpleNamespace(RTDEControlInterface=Ctrl), types.SimpleNamespace(RTDEReceiveInterface=Recv))


def test_ur_rtde_adapter_with_fake_sdk(monkeypatch):
    calls = Calls()
    ctrl_mod, recv_mod = fake_ur_modules(calls)
    monkeypatch.setitem(sys.modules, "rtde_control", ctrl_mod)
    monkeypatch.setitem(sys.modules, "rtde_receive", recv_mod)
    driver = make_driver("ur_rtde", host="192.168.1.10", rate_hz=500)
    assert driver.info.dof == 6 and driver.info.gripper_range is None and driver.info.nominal_rate_hz == 500
    assert calls == []  # info without touching the SDK
    driver.connect()
    assert isinstance(driver, ArmDriver) and driver.is_connected
    assert ("ctrl", "192.168.1.10", 500.0) in calls
    state = driver.read_state()
    assert state.joint_pos.shape == (6,) and state.joint_effort.tolist() == [1.0] * 6
    np.testing.assert_allclose(state.eef_quat, [0, 0, 1, 0], atol=1e-12)  # rotvec (0, pi, 0)
    sent = driver.command_joints([0.0, -1.0, 4.0, 0.0, 0.0, 0.0], 0.05)  # elbow beyond +-pi is clipped
    assert sent.clipped and sent.q[2] == pytest.approx(np.pi) and sent.gripper is None
    name, q, speed, acc, t, lookahead, gain = calls[-1]
    assert name == "servoJ" and q[2] == pytest.approx(np.pi) and t == pytest.approx(1 / 500)
    assert (lookahead, gain) == (0.1, 300.0)
    # one servo tick end to end through the interface (no kinematics: joint targets only)
    core = ServoCore(driver.info, ServoConfig(rate_hz=500))
    assert core.workspace is None
    core.heartbeat(0)
    assert core.submit(ServoTarget.cartesian([0.4, 0, 0.3], seq=1, sent_ns=0, expires_ns=SEC), 0).reason == \
        "no_kinematics"
    loop = ServoLoop(driver, core, realtime=False)
    loop.run_simulated(3)
    assert calls.names().count("servoJ") == 4
    driver.disconnect()
    assert calls.names()[-4:] == ["servoStop", "stopScript", "ctrl.disconnect", "recv.disconnect"]
    with pytest.raises(DriverError, match="real robot"):
        driver.reset(object_poses={"cube": [0, 0, 0]})


def fake_xarm_module(calls: Calls):
    class XArmAPI:
        def __init__(self, host, is_radian=False):
            calls.append(("XArmAPI", host, is_radian))
            self.connected = True
            self.grip = 850.0

        def __getattr__(self, name):  # clean_warn, clean_error, motion_enable, set_mode, set_state, ...
            def call(*args, **kwargs):
                calls.append((name, args, kwargs))
                return 0
            return call

        def get_joint_states(self, is_radian=True):
            return 0, [[0.1] * 7, [0.0] * 7, [2.0] * 7]

        def get_position(self, is_radian=True):
            return 0, [300.0, 0.0, 200.0, np.pi, 0.0, 0.0]

        def set_gripper_position(self, pos, wait=False):
            calls.append(("set_gripper_position", pos, wait))
            self.grip = pos
            return 0

        def get_gripper_position(self):
            return 0, self.grip

    wrapper = types.ModuleType("xarm.wrapper")
    wrapper.XArmAPI = XArmAPI
    pkg = types.ModuleType("xarm")
    pkg.wrapper = wrapper
    return pkg, wrapper


def test_xarm_adapter_with_fake_sdk(monkeypatch):
    calls = Calls()
    pkg, wrapper = fake_xarm_module(calls)
    monkeypatch.setitem(sys.modules, "xarm", pkg)
    monkeypatch.setitem(sys.modules, "xarm.wrapper", wrapper)
    driver = make_driver("xarm", host="192.168.1.185", dof=7)
    assert driver.info.dof == 7 and driver.info.gripper_range == (0.0, 0.085)
    driver.connect()
    names = calls.names()
    assert names[0] == "XArmAPI" and calls[0][2] is True
    assert ("set_mode", (1,), {}) in calls and ("set_state", (0,), {}) in calls  # servo motion mode, ready
    assert names.index("motion_enable") < names.index("set_mode") < names.index("set_state")
    state = driver.read_state()
    np.testing.assert_allclose(state.eef_pos, [0.3, 0.0, 0.2])  # mm -> m
    np.testing.assert_allclose(np.abs(state.eef_quat), [0, 1, 0, 0], atol=1e-12)  # roll pi
    assert state.gripper == pytest.approx(0.085)
    sent = driver.command_joints(np.full(7, 0.2), 0.04)
    assert not sent.clipped and sent.gripper == 0.04
    servo = [c for c in calls if c[0] == "set_servo_angle_j"][-1]
    assert servo[1][0] == pytest.approx([0.2] * 7) and servo[2] == {"is_radian": True}
    deadline = time.monotonic() + 2.0  # the gripper worker thread sends 0.04 m = 400 units
    while not any(c[0] == "set_gripper_position" for c in calls) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ("set_gripper_position", pytest.approx(400.0), False) in calls
    driver.disconnect()
    assert ("set_state", (4,), {}) in calls and calls.names()[-1] == "disconnect"


def fake_panda_modules(calls: Calls):
    class JointPosition:
        def set_control(self, q, dq=None):
            calls.append(("set_control", np.asarray(q).tolist()))

    class Panda:
        def __init__(self, host):
            calls.append(("Panda", host))

        def start_controller(self, ctrl):
            calls.append(("start_controller", type(ctrl).__name__))

        def stop_controller(self):
            calls.append(("stop_controller",))

        def get_state(self):
            return types.SimpleNamespace(q=list(kin.HOME_Q), dq=[0.0] * 7, tau_J=[0.5] * 7)

        def get_position(self):
            return np.array([0.3, 0.0, 0.5])

        def get_orientation(self):
            return np.array([1.0, 0.0, 0.0, 0.0])  # x, y, z, w (panda_py default)

    class Gripper:
        def __init__(self, host):
            self.width = 0.08

        def move(self, width, speed):
            calls.append(("move", width, speed))
            self.width = width
            return True

        def read_once(self):
            return types.SimpleNamespace(width=self.width)

    panda_py = types.ModuleType("panda_py")
    panda_py.Panda = Panda
    controllers = types.ModuleType("panda_py.controllers")
    controllers.JointPosition = JointPosition
    libfranka = types.ModuleType("panda_py.libfranka")
    libfranka.Gripper = Gripper
    panda_py.controllers, panda_py.libfranka = controllers, libfranka
    return {"panda_py": panda_py, "panda_py.controllers": controllers, "panda_py.libfranka": libfranka}


def test_franka_adapter_with_fake_sdk(monkeypatch):
    calls = Calls()
    for name, mod in fake_panda_modules(calls).items():
        monkeypatch.setitem(sys.modules, name, mod)
    driver = make_driver("franka", host="172.16.0.2")
    assert driver.info.kinematics == "panda" and driver.info.q_max[3] == pytest.approx(-0.0698)
    driver.connect()
    assert calls[:2] == [("Panda", "172.16.0.2"), ("start_controller", "JointPosition")]
    state = driver.read_state()
    np.testing.assert_allclose(state.eef_quat, [0, 1, 0, 0])  # xyzw -> wxyz
    assert state.joint_effort.tolist() == [0.5] * 7 and state.gripper == pytest.approx(0.08)
    # a full servo tick: the servo core commands the held position through set_control
    core = ServoCore(driver.info)
    core.heartbeat(0)
    target = ServoTarget.joint(kin.HOME_Q + 0.1, seq=1, sent_ns=0, expires_ns=SEC, gripper=0.03)
    assert core.submit(target, now_ns=0).accepted
    ServoLoop(driver, core, realtime=False).run_simulated(5)
    assert calls.names().count("set_control") == 5
    moved = np.array([c for c in calls if c[0] == "set_control"][-1][1]) - kin.HOME_Q
    assert 0 < moved.max() <= 5 * core.max_step.max() + 1e-12
    deadline = time.monotonic() + 2.0
    while not any(c[0] == "move" for c in calls) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ("move", 0.03, 0.1) in calls
    driver.disconnect()
    assert calls[-1] == ("stop_controller",)


@pytest.mark.parametrize("driver_name,kwargs,modules,extra", [
    ("ur_rtde", {"host": "10.0.0.2"}, ["rtde_control"], "ur"),
    ("xarm", {"host": "10.0.0.3"}, ["xarm", "xarm.wrapper"], "xarm"),
    ("franka", {"host": "10.0.0.4"}, ["panda_py"], "franka"),
])
def test_missing_sdk_is_a_clear_error(monkeypatch, driver_name, kwargs, modules, extra):
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)  # import of a None entry raises ImportError
    driver = make_driver(driver_name, **kwargs)
    assert driver.info.dof in (6, 7)  # still describes itself
    with pytest.raises(DeviceUnavailableError, match=f"robotstack\\[{extra}\\]"):
        driver.connect()
    assert not driver.is_connected


def test_unknown_driver_name():
    with pytest.raises(DeviceUnavailableError, match="expected one of"):
        make_driver("kuka")


def test_orientation_helpers():
    np.testing.assert_allclose(rotvec_to_quat([0, 0, np.pi / 2]), [np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    np.testing.assert_allclose(rpy_to_quat(0, 0, np.pi / 2), [np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
