"""Task registry: `make(name, **kwargs)`, `task_names()`, `make_expert(env, noise, seed)`.

Names prefixed `mw:` are Meta-World tasks handled by sim.metaworld_env (imported lazily: it needs metaworld).
A name suffixed `@servo` (`push@servo`) is the task with the arm moved as the arm server's default servo moves it
(sim.base_env.ServoArm): its own task name everywhere (stores, checkpoints, manifests), so data and policies of the
two arms never mix, and every stage that makes the env from the name gets the same arm.
"""

from __future__ import annotations

from typing import Callable

import gymnasium as gym

from robotstack.core.errors import UnknownTaskError
from robotstack.core.joint_motion import SERVO_TASK_SUFFIX, base_task
from sim.base_env import PandaEnv
from sim.tasks.pick_place import PickPlaceTask
from sim.tasks.push import PushTask
from sim.tasks.push_t import PushTTask
from sim.tasks.reach import ReachTask
from sim.tasks.stack import StackTask

MW_PREFIX = "mw:"

TASKS: dict[str, Callable[[], object]] = {
    "reach": ReachTask,
    "push": PushTask,
    "pick_place": PickPlaceTask,
    "push_t": PushTTask,
    "stack": StackTask,
}


def task_names() -> list[str]:
    """Own (MuJoCo Panda) task names; Meta-World tasks are `mw:<metaworld-v3-name>`."""
    return list(TASKS)


def make(name: str, **kwargs) -> gym.Env:
    """Build a task env. kwargs: seed, cameras, image_size, control_hz, physics_hz, max_episode_steps,
    randomize, shaped_reward, ... (see sim.base_env.PandaEnv)."""
    if name.startswith(MW_PREFIX):
        if name.endswith(SERVO_TASK_SUFFIX):
            raise UnknownTaskError(f"unknown task {name!r}: '{SERVO_TASK_SUFFIX}' (the arm server's servo arm) is for "
                                   f"the Panda tasks {task_names()}; Meta-World's Sawyer is driven by mocap")
        from sim.metaworld_env import make_metaworld  # lazy: optional heavy dependency

        return make_metaworld(name[len(MW_PREFIX):], **kwargs)
    base = base_task(name)
    if base not in TASKS:
        raise UnknownTaskError(
            f"unknown task {name!r}; known tasks: {task_names()}, each also as '<task>{SERVO_TASK_SUFFIX}' (the arm "
            f"server's servo arm), and '{MW_PREFIX}<metaworld-v3-name>' (e.g. '{MW_PREFIX}pick-place-v3')"
        )
    if base != name:
        kwargs.setdefault("servo", {})
    return PandaEnv(TASKS[base](), name=name, **kwargs)


def make_expert(env: gym.Env, noise: float = 0.0, seed: int | None = None):
    """Scripted closed-loop expert for `env` (an env from `make`): object with reset() and act(obs)."""
    base = env.unwrapped
    if not isinstance(base, PandaEnv):
        from sim.metaworld_env import MetaWorldExpert  # lazy, see make()

        return MetaWorldExpert(env, noise=noise, seed=seed)
    from sim.experts import make_panda_expert

    return make_panda_expert(base, noise=noise, seed=seed)
