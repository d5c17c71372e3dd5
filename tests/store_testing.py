"""Record a small episode store with a task's scripted expert (real MuJoCo, real zarr) for tests of any stage."""

from __future__ import annotations

from pathlib import Path


def record_store(path: Path, task: str = "reach", episodes: int = 4, noise: float = 0.2,
                 cameras: tuple[str, ...] = (), image_size: int = 96, labels: str = "executed") -> Path:
    import sim
    from robotstack.data.recording import open_or_create_store, record_scripted

    env = sim.make(task, cameras=cameras, image_size=image_size) if cameras else sim.make(task)
    store = open_or_create_store(path, zarr_format=3)
    try:
        record_scripted(env, sim.make_expert(env, noise=noise, seed=0), store, task, episodes, seed=0, noise=noise,
                        show_progress=False, labels=labels)
    finally:
        store.close()
        env.close()
    return path


def train_tiny_il(config: dict, store: Path, obs_keys: list[str], run: Path) -> Path:
    """Train the IL stage (robotstack.train.il) with ``config`` on ``store`` into ``run``; returns
    RUN/checkpoints/latest (a real policy checkpoint for the stages that start from one)."""
    from robotstack.core.config import from_dict
    from robotstack.train.il import ILConfig, train

    doc = {**config, "data": {"paths": [str(store)], "obs_keys": list(obs_keys)}}
    train(from_dict(ILConfig, doc), run, show_progress=False)
    return run / "checkpoints" / "latest"
