"""Task scenes as plain data for other physics engines (the PyBullet arm server): geometry and per-seed start states.

hardware/ never imports sim/, so the CLI calls these functions and hands the dicts to the driver / arm server:

    task_objects(env)        -> [{name, shape, size | parts, pose, mass, friction, rgba, collide}]  (ObjectSpec dicts)
    task_scenes(task, seeds) -> [{seed, object_poses: {name: [x,y,z,qw,qx,qy,qz]}, goal: [...], start_q: [7]}]

Objects are the task's free bodies (dynamic) and mocap markers (visual only), read from the compiled MuJoCo model
geometry; sizes are MuJoCo half-sizes, poses (w, x, y, z) in the world = robot base frame (table top at z = 0).
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

_SHAPES = {int(mujoco.mjtGeom.mjGEOM_BOX): ("box", 3), int(mujoco.mjtGeom.mjGEOM_SPHERE): ("sphere", 1),
           int(mujoco.mjtGeom.mjGEOM_CYLINDER): ("cylinder", 2)}


def _task_bodies(model: mujoco.MjModel) -> list[int]:
    out = []
    for b in range(1, model.nbody):
        j = model.body_jntadr[b]
        free = model.body_jntnum[b] == 1 and model.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE
        if free or model.body_mocapid[b] >= 0:
            out.append(b)
    return out


def _part(kind_id: int, size, pos, quat, where: str) -> dict[str, Any]:
    kind, n = _SHAPES.get(int(kind_id), (None, 0))
    if kind is None:
        raise ValueError(f"{where}: geom type {kind_id} has no PyBullet equivalent here")
    return {"shape": kind, "size": [float(v) for v in size[:n]], "pos": [float(v) for v in pos],
            "quat": [float(v) for v in quat]}


def task_objects(env) -> list[dict[str, Any]]:
    """ObjectSpec dicts of the task's free bodies and mocap markers, posed as after the env's last reset."""
    base = env.unwrapped
    m, d = base.model, base.data
    objects = []
    for b in _task_bodies(m):
        geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] == b]
        collide = any(m.geom_contype[g] or m.geom_conaffinity[g] for g in geoms)
        if collide:  # visual-only geoms of a colliding body are not part of its shape
            geoms = [g for g in geoms if m.geom_contype[g] or m.geom_conaffinity[g]]
        mocap = m.body_mocapid[b] >= 0
        parts = [_part(m.geom_type[g], m.geom_size[g], m.geom_pos[g], m.geom_quat[g], f"geom {g}") for g in geoms]
        rgba, friction = (m.geom_rgba[geoms[0]], m.geom_friction[geoms[0]][0]) if geoms else (None, 1.0)
        if not geoms:  # markers made of sites (sim/panda_scene.add_target_marker): visual only
            sites = [s for s in range(m.nsite) if m.site_bodyid[s] == b]
            if not sites:
                continue
            parts = [_part(m.site_type[s], m.site_size[s], m.site_pos[s], m.site_quat[s], f"site {s}") for s in sites]
            rgba = m.site_rgba[sites[0]]
        obj = {"name": m.body(b).name, "pose": [float(v) for v in np.concatenate([d.xpos[b], d.xquat[b]])],
               "mass": 0.0 if mocap else float(m.body_mass[b]), "friction": float(friction),
               "rgba": [float(v) for v in rgba], "collide": bool(collide and not mocap)}
        single = len(parts) == 1 and np.allclose(parts[0]["pos"], 0) and np.allclose(parts[0]["quat"], [1, 0, 0, 0])
        if single:
            obj.update(shape=parts[0]["shape"], size=parts[0]["size"])
        else:
            obj.update(shape="compound", parts=parts)
        objects.append(obj)
    return objects


def task_scenes(env, seeds) -> list[dict[str, Any]]:
    """Start state of each seed: object poses, the goal and the arm's start joints (what env.reset(seed) makes)."""
    from robotstack.core import keys

    base = env.unwrapped
    m, d = base.model, base.data
    bodies = _task_bodies(m)
    scenes = []
    for seed in seeds:
        obs, _ = env.reset(seed=int(seed))
        poses = {m.body(b).name: [float(v) for v in np.concatenate([d.xpos[b], d.xquat[b]])] for b in bodies}
        scenes.append({"seed": int(seed), "object_poses": poses, "goal": [float(v) for v in obs[keys.GOAL]],
                       "start_q": [float(v) for v in obs[keys.JOINT_POS]]})
    return scenes


def twin_driver_kwargs(env) -> dict[str, Any]:
    """What hardware's MuJoCo twin driver needs to drive this env's own model (names of the Panda's joints,
    actuators, TCP site and the task's dynamic bodies), so callers never reach into the scene's internals."""
    from sim import panda_scene as ps

    base, p = env.unwrapped, ps.PREFIX
    return dict(model=base.model, data=base.data, arm_joints=[p + j for j in ps.ARM_JOINTS],
                arm_actuators=[p + j + "_act" for j in ps.ARM_JOINTS],
                finger_joints=[p + j for j in ps.FINGER_JOINTS],
                finger_actuators=[p + j + "_act" for j in ps.FINGER_JOINTS], tcp_site=p + "tcp",
                object_bodies=[b for b in base.task.object_bodies if base.model.body(b).mocapid[0] < 0],
                kinematics="panda")
