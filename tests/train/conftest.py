"""Fixtures for the training-stage tests: a tiny real zarr store recorded with the scripted reach expert and
a tiny IL config (MLP 32 wide) that trains in well under a second per run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from store_testing import TINY_IL, record_store, train_tiny_il

TINY = TINY_IL  # the training-stage tests' name for it


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    return record_store(tmp_path_factory.mktemp("il_data") / "reach.zarr")


@pytest.fixture
def tiny_config_file(tiny_store, tmp_path) -> Path:
    doc = {**TINY, "data": {"paths": [str(tiny_store)], "obs_keys": ["robot_eef_pos", "robot_gripper", "goal"]}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="session")
def tiny_teacher(tiny_store, tmp_path_factory) -> Path:
    """RUN/checkpoints/latest of a tiny 8-step IL run on the recorded reach store (a real teacher checkpoint)."""
    return train_tiny_il(TINY, tiny_store, ["robot_eef_pos", "robot_gripper", "goal"],
                         tmp_path_factory.mktemp("teacher") / "il_run")
