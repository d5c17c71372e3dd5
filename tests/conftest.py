import os

# Headless rendering must be chosen before mujoco is first imported (machine_notes.md §2).
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
