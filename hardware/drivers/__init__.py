"""Arm drivers behind one small interface (hardware/drivers/base.py: ArmDriver, ArmInfo, ArmState, SentCommand).

    pybullet   PyBulletPandaDriver   Panda in PyBullet (a different engine from training), task objects from dicts
    mujoco     MujocoArmDriver       twin over a caller-owned MuJoCo model/data (the training sim)
    kinematic  KinematicPandaDriver  ideal physics-free Panda (polymetis' mock arm): reach-like tasks, runtime timing
    ur_rtde    URRtdeDriver          Universal Robots, ur-rtde servoJ          (extra: ur)      never run on an arm
    xarm       XArmDriver            UFACTORY xArm, set_servo_angle_j mode 1  (extra: xarm)    never run on an arm
    franka     FrankaDriver          Franka Panda/FR3, panda-python            (extra: franka)  never run on an arm

Vendor SDKs are imported on connect(), so every driver can be built and asked for ``info`` without them.
"""

from __future__ import annotations

import importlib

from hardware.drivers.base import (ArmDriver, ArmInfo, ArmState, AsyncGripper, DriverError, ObjectSpec,
                                   SentCommand, import_sdk)
from robotstack.core.errors import DeviceUnavailableError

DRIVERS = {
    "pybullet": ("hardware.drivers.pybullet_driver", "PyBulletPandaDriver"),
    "mujoco": ("hardware.drivers.mujoco_driver", "MujocoArmDriver"),
    "kinematic": ("hardware.drivers.kinematic_driver", "KinematicPandaDriver"),
    "ur_rtde": ("hardware.drivers.ur_rtde_driver", "URRtdeDriver"),
    "xarm": ("hardware.drivers.xarm_driver", "XArmDriver"),
    "franka": ("hardware.drivers.franka_driver", "FrankaDriver"),
}


def make_driver(name: str, **kwargs) -> ArmDriver:
    """Build a driver by name (not connected). Unknown name -> DeviceUnavailableError listing the known ones."""
    if name not in DRIVERS:
        raise DeviceUnavailableError(f"unknown arm driver {name!r}; expected one of: {', '.join(DRIVERS)}")
    module, cls = DRIVERS[name]
    return getattr(importlib.import_module(module), cls)(**kwargs)


__all__ = ["DRIVERS", "ArmDriver", "ArmInfo", "ArmState", "AsyncGripper", "DriverError", "ObjectSpec", "SentCommand",
           "import_sdk", "make_driver"]
