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
