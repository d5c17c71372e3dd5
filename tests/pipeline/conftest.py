"""Fixtures for the pipeline tests: tiny stage configs (an MLP 32 wide, a few steps) and a pipeline YAML that
points at them, with the offline rounds and the online stage switched off (rounds: 0, online.enabled: false)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
import store_testing
from store_testing import train_tiny_il

ROOT = Path(__file__).resolve().parents[2]
OBS_KEYS = ["robot_eef_pos", "robot_gripper", "goal"]
TINY_IL = {**store_testing.TINY_IL, "data": {"paths": ["set-by-the-pipeline.zarr"], "obs_keys": OBS_KEYS}}
TINY_PIPELINE = {
    "task": "reach",
    "rounds": 0,
    "eval": {"episodes": 2},
    "demos": {"episodes": 3},
    "il": {"config": "il.yaml"},
    "online": {"enabled": False},
    "distill": {"config": "distill.yaml"},
}


def write_yaml(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def tiny_pipeline(tmp_path) -> Path:
    """tmp/configs/{pipeline,il,distill}.yaml; the stage files sit beside the pipeline file (paths are relative)."""
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    write_yaml(cfg_dir / "il.yaml", TINY_IL)
    write_yaml(cfg_dir / "distill.yaml", {"base": str(ROOT / "configs" / "distill" / "rl100.yaml"),
                                          "train": {"steps": 4, "batch_size": 8, "log_every": 2,
                                                    "checkpoint_every": 2, "num_threads": 1}})
    return write_yaml(cfg_dir / "pipeline.yaml", TINY_PIPELINE)


def record_demos(path: Path, episodes: int, seed: int = 0, task: str = "reach") -> Path:
    import sim
    from robotstack.data.recording import record_scripted
    from robotstack.data.store import EpisodeStore

    env = sim.make(task)
    store = EpisodeStore.open_or_create(path)
    try:
        record_scripted(env, sim.make_expert(env, noise=0.2, seed=seed), store, task, episodes, seed=seed, noise=0.2,
                        show_progress=False)
    finally:
        store.close()
        env.close()
    return path


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory) -> tuple[Path, Path]:
    """(demo store, RUN/checkpoints/latest) of an 8-step IL run on 3 reach demos: a real, untrained-ish policy."""
    root = tmp_path_factory.mktemp("tiny_policy")
    store = record_demos(root / "demos.zarr", 3)
    return store, train_tiny_il(TINY_IL, store, OBS_KEYS, root / "il")


def tree_state(path: Path) -> dict[str, tuple[int, int]]:
    """relative file -> (size, mtime_ns) of everything under `path` (to show a dir was not touched)."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def snapshot():
    return tree_state


@pytest.fixture
def demos_recorder():
    return record_demos
