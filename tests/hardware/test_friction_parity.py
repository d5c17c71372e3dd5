"""The PyBullet arm server's scene slides objects like the MuJoCo scene the policies were trained in.

MuJoCo combines a contact's two frictions by taking the larger, Bullet by multiplying; the driver translates
(hardware/drivers/pybullet_driver.py bullet_frictions). Measured behaviour: a free object launched along the table
slides the same distance in both engines. Before the translation Bullet slid it ~1.6x as far (0.6 vs 1.0)."""

from __future__ import annotations

import mujoco
import numpy as np
import pybullet as pb
import pytest

import sim
from hardware.drivers.base import ObjectSpec
from hardware.drivers.pybullet_driver import PyBulletPandaDriver, bullet_frictions
from sim.scene_export import task_objects

STEPS_S = 4.0  # long enough for a launched object to come to rest


def _mujoco_slide(env, body: str, v: float) -> float:
    u = env.unwrapped
    m, d = u.model, u.data
    env.reset(seed=0)
    j = m.body_jntadr[m.body(body).id]
    qa, va = m.jnt_qposadr[j], m.jnt_dofadr[j]
    x0 = d.qpos[qa]
    d.qvel[va:va + 6] = [v, 0, 0, 0, 0, 0]
    for _ in range(int(STEPS_S / m.opt.timestep)):
        mujoco.mj_step(m, d)
    return float(d.qpos[qa] - x0)


def _bullet_slide(objects, body: str, v: float) -> float:
    drv = PyBulletPandaDriver(objects)
    drv.connect()
    try:
        drv.reset()
        bid, cid = drv.body_id(body), drv.client_id
        x0 = pb.getBasePositionAndOrientation(bid, physicsClientId=cid)[0][0]
        pb.resetBaseVelocity(bid, [v, 0, 0], [0, 0, 0], physicsClientId=cid)
        for _ in range(int(STEPS_S * drv.physics_hz)):
            pb.stepSimulation(physicsClientId=cid)
        return float(pb.getBasePositionAndOrientation(bid, physicsClientId=cid)[0][0] - x0)
    finally:
        drv.disconnect()


@pytest.mark.parametrize("task,body", [("push", "cube"), ("push_t", "tblock")])
def test_a_launched_object_slides_as_far_on_the_arm_server_as_in_mujoco(task, body):
    env = sim.make(task)
    try:
        env.reset(seed=0)
        objects = task_objects(env)
        assert body in [o["name"] for o in objects], (task, body, [o["name"] for o in objects])
        for v in (0.4, 0.8):
            mj, bt = _mujoco_slide(env, body, v), _bullet_slide(objects, body, v)
            assert mj > 0.005, (task, v, mj)
            assert abs(bt - mj) < 0.2 * mj, (task, v, f"bullet {bt * 100:.2f} cm vs mujoco {mj * 100:.2f} cm")
    finally:
        env.close()


def test_friction_translation_reproduces_mujocos_larger_of_the_pair():
    specs = [ObjectSpec.from_dict(d, d["name"]) for d in (
        {"name": "table", "shape": "box", "size": [0.6, 0.6, 0.025], "pose": [0.4, 0, -0.025], "mass": 0.0,
         "friction": 0.6},
        {"name": "cube", "shape": "box", "size": [0.02] * 3, "pose": [0.5, 0, 0.02], "mass": 0.1, "friction": 1.0},
        {"name": "slick", "shape": "box", "size": [0.02] * 3, "pose": [0.5, 0.1, 0.02], "mass": 0.1,
         "friction": 0.3})]
    f = bullet_frictions(specs)
    mujoco_pair = {"cube": max(1.0, 0.6), "slick": max(0.3, 0.6)}
    for name, want in mujoco_pair.items():
        assert f[name] * f["table"] == pytest.approx(want)  # Bullet multiplies
    assert bullet_frictions(specs[1:]) == {"cube": 1.0, "slick": 0.3}  # no table: copied as they are
