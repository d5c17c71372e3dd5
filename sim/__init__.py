"""MuJoCo task suite (Panda tasks + Meta-World adapter) and scripted experts."""

from sim.registry import make, make_expert, task_names

__all__ = ["make", "make_expert", "task_names"]
