"""sim.make / make_expert name handling, including lazy delegation of mw:* names."""

import sys
import types

import pytest

import sim
from robotstack.core.errors import UnknownTaskError


def test_unknown_task_lists_known_names():
    with pytest.raises(UnknownTaskError) as exc:
        sim.make("pick-and-place-typo")
    msg = str(exc.value)
    for name in sim.task_names():
        assert name in msg
    assert "mw:" in msg


def test_mw_names_are_delegated_lazily(monkeypatch):
    calls = {}
    fake = types.ModuleType("sim.metaworld_env")

    def make_metaworld(name, **kwargs):
        calls["make"] = (name, kwargs)
        return "ENV"

    class MetaWorldExpert:
        def __init__(self, env, noise=0.0, seed=None):
            calls["expert"] = (env, noise, seed)

    fake.make_metaworld = make_metaworld
    fake.MetaWorldExpert = MetaWorldExpert
    monkeypatch.setitem(sys.modules, "sim.metaworld_env", fake)
    assert sim.make("mw:pick-place-v3", seed=3) == "ENV"
    assert calls["make"] == ("pick-place-v3", {"seed": 3})

    class NotPanda:
        unwrapped = object()

    env = NotPanda()
    sim.make_expert(env, noise=0.2, seed=1)
    assert calls["expert"] == (env, 0.2, 1)


def test_servo_variants_are_named_tasks_and_bad_ones_are_refused():
    from robotstack.core.errors import ConfigError

    env = sim.make("reach@servo", servo={"velocity_scale": 1.0})  # explicit settings win over the variant's defaults
    spec = env.unwrapped.task_spec()
    assert spec["task"] == "reach@servo" and spec["servo"] == {"velocity_scale": 1.0, "accel_scale": 0.5}
    assert sim.make("reach").unwrapped.task_spec()["servo"] is None
    with pytest.raises(UnknownTaskError, match=r"'reachy@servo'.*'<task>@servo'"):
        sim.make("reachy@servo")
    with pytest.raises(UnknownTaskError, match="Meta-World"):
        sim.make("mw:push-v3@servo")
    with pytest.raises(ConfigError, match=r"servo: velocity_scale=1.5: expected a fraction"):
        sim.make("reach@servo", servo={"velocity_scale": 1.5})
    with pytest.raises(ConfigError, match="servo"):
        sim.make("reach", servo={"speed": 0.5})
