"""MuJoCo task suite (Panda tasks + Meta-World adapter) and scripted experts."""

from sim.registry import SERVO_SUFFIX, make, make_expert, task_names

__all__ = ["SERVO_SUFFIX", "make", "make_expert", "task_names"]
