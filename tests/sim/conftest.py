"""Shared fixtures for sim tests. MUJOCO_GL must be set before mujoco is first imported (headless EGL)."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import pytest  # noqa: E402

import sim  # noqa: E402


@pytest.fixture(scope="module")
def env_factory():
    """Build envs through sim.make and close them (renderers!) when the module is done."""
    made = []

    def _make(name, **kwargs):
        env = sim.make(name, **kwargs)
        made.append(env)
        return env

    yield _make
    for env in made:
        env.close()
