"""Fixtures for the `train critic` / scorer / `critic evaluate` tests: the tiny real reach store and tiny IL
checkpoint of tests/train (recorded with the scripted expert, rewards included), reused, not rebuilt."""

from __future__ import annotations

from pathlib import Path

import pytest

from store_testing import TINY_IL as TINY
from store_testing import record_store, train_tiny_il


@pytest.fixture(scope="session")
def reach_store(tmp_path_factory) -> Path:
    return record_store(tmp_path_factory.mktemp("critic_data") / "reach.zarr", episodes=4)


@pytest.fixture(scope="session")
def reach_policy(reach_store, tmp_path_factory) -> Path:
    """RUN/checkpoints/latest of a tiny 8-step IL run (To=2, T=8, Ta=4) on the reach store."""
    return train_tiny_il(TINY, reach_store, ["robot_eef_pos", "robot_gripper", "goal"],
                         tmp_path_factory.mktemp("critic_policy") / "il_run")
