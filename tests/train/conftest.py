"""Fixtures for the training-stage tests: a tiny real zarr store recorded with the scripted reach expert and
a tiny IL config (MLP 32 wide) that trains in well under a second per run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from store_testing import record_store, train_tiny_il

TINY = {
    "task": "reach",
    "policy": {"horizon": 8, "n_action_steps": 4,
               "denoiser": {"mlp_width": 32, "mlp_depth": 1, "mlp_time_dim": 16},
               "encoder": {"state_hidden": [32], "state_feature_dim": 16}},
    "train": {"steps": 8, "batch_size": 8, "log_every": 2, "checkpoint_every": 4, "warmup_steps": 2,
              "num_threads": 1},
    "eval": {"episodes": 0},
}


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
