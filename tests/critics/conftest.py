"""Fixtures for the `train critic` / scorer / `critic evaluate` tests: the tiny real reach store and tiny IL
checkpoint of tests/train (recorded with the scripted expert, rewards included), reused, not rebuilt."""

from __future__ import annotations

from pathlib import Path

import pytest

from store_testing import record_store
from tests.train.conftest import TINY


@pytest.fixture(scope="session")
def reach_store(tmp_path_factory) -> Path:
    return record_store(tmp_path_factory.mktemp("critic_data") / "reach.zarr", episodes=4)


@pytest.fixture(scope="session")
def reach_policy(reach_store, tmp_path_factory) -> Path:
    """RUN/checkpoints/latest of a tiny 8-step IL run (To=2, T=8, Ta=4) on the reach store."""
    from robotstack.core.config import from_dict
    from robotstack.train.il import ILConfig, train

    doc = {**TINY, "data": {"paths": [str(reach_store)], "obs_keys": ["robot_eef_pos", "robot_gripper", "goal"]}}
    run = tmp_path_factory.mktemp("critic_policy") / "il_run"
    train(from_dict(ILConfig, doc), run, show_progress=False)
    return run / "checkpoints" / "latest"
