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


# `train offline-rl`'s tiny budget (seconds on 2 cores), shared by the offline-RL, RGB and pipeline tests
OFFLINE_RL_TINY = ["critic.steps=30", "critic.batch_size=64", "critic.hidden=[32,32]", "dynamics.hidden=[32]",
                   "dynamics.weight_decay=[1.0e-5,1.0e-5]", "dynamics.max_epochs=5", "gate.every=2", "gate.horizon=2",
                   "gate.batch_size=16", "train.steps=4", "train.batch_size=16", "train.lr=1.0e-3",
                   "train.log_every=1", "train.checkpoint_every=2", "ppo.ddim_steps=4"]


# the tiny IL config (MLP 32 wide, 8 steps: well under a second) of every test that needs a real IL checkpoint
TINY_IL = {
    "task": "reach",
    "policy": {"horizon": 8, "n_action_steps": 4,
               "denoiser": {"mlp_width": 32, "mlp_depth": 1, "mlp_time_dim": 16},
               "encoder": {"state_hidden": [32], "state_feature_dim": 16}},
    "train": {"steps": 8, "batch_size": 8, "log_every": 2, "checkpoint_every": 4, "warmup_steps": 2,
              "num_threads": 1},
    "eval": {"episodes": 0},
}


def train_tiny_il(config: dict, store: Path, obs_keys: list[str], run: Path) -> Path:
    """Train the IL stage (robotstack.train.il) with ``config`` on ``store`` into ``run``; returns
    RUN/checkpoints/latest (a real policy checkpoint for the stages that start from one)."""
    from robotstack.core.config import from_dict
    from robotstack.train.il import ILConfig, train

    doc = {**config, "data": {"paths": [str(store)], "obs_keys": list(obs_keys)}}
    train(from_dict(ILConfig, doc), run, show_progress=False)
    return run / "checkpoints" / "latest"
