"""Task success judged from the arm server's observation alone (the runtime never imports sim).

These mirror the sim tasks' sparse criteria (sim/tasks/*.py) for the tasks whose criterion needs nothing but
the published state; tasks that also need contact or release information (pick_place, stack, push_t's
orientation) return None and episodes then end by step limit or the operator.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

TOL_M = 0.02  # same 2 cm as sim/tasks/reach.py and sim/tasks/push.py


def success_from_obs(task: str) -> Callable[[dict], bool] | None:
    if task == "reach":
        return lambda o: float(np.linalg.norm(np.asarray(o["goal"]) - np.asarray(o["robot_eef_pos"]))) < TOL_M
    if task == "push":
        return lambda o: float(np.linalg.norm(np.asarray(o["object_state"])[:2] - np.asarray(o["goal"])[:2])) < TOL_M
    return None
