"""Stage 1: imitation learning of a diffusion policy from an episode store (`robotstack train il`).

Read top to bottom: config dataclasses -> data -> builders -> loss (named pure function) -> checkpoints ->
evaluation -> the loop -> `main`.

Glossary: B global batch, b = B / world_size per-rank batch, To obs history, T horizon (predicted chunk),
Ta executed actions, Da action dim, N train diffusion timesteps, M windows in the data.

Determinism and resume (robotstack/train/common.py): the window indices, diffusion timesteps and noise of
step s are drawn for the *global* batch from generators seeded with (seed, s), then each rank takes its
shard. So (a) a run resumed from the checkpoint of step s draws exactly what the uninterrupted run drew and
(b) a DDP run over W processes sees the same global batch and noise as one process (its gradient is the
mean of equal shards = the full-batch gradient, up to float summation order). Global-RNG consumers inside
the policy (random crop, VIB sampling) are re-seeded each step with (seed, s, rank).

Run dir layout:
    RUN_DIR/config.json                     resolved ILConfig (what `--resume` restarts from)
    RUN_DIR/metrics.csv, RUN_DIR/tb/        loss, lr, steps/s, samples/s, eval/success_rate
    RUN_DIR/checkpoints/step_N/             model.safetensors, ema.safetensors, config.json (policy),
                                            optimizer.safetensors, train_state.json
    RUN_DIR/checkpoints/latest -> step_N    symlink, swapped atomically after each complete checkpoint
    RUN_DIR/eval/step_N/                    per-episode JSON of the periodic evaluations
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from robotstack.core import ee_action as ee
from robotstack.core import keys as K
from robotstack.core.config import save_config, to_dict
from robotstack.core.errors import ConfigError, StoreError
from robotstack.core.progress import print_summary, progress_bar
from robotstack.data.sampler import SequenceSampler, policy_padding
from robotstack.data.store import load_stores, stores_action_mode
from robotstack.train.common import (CONFIG_NAME, DistInfo, LoopConfig, RunLogger,
                                     StopRequest, init_distributed, numpy_rng,
                                     read_metrics, resolve_stage_config, restore_run_checkpoint, run_dir_for,
                                     save_run_checkpoint, set_lr, shard, step_seed, torch_gen, truncate_metrics)

from policies.bc.config import MLPBCConfig
from policies.bc.model import MLPBCPolicy
from policies.common.ema import EMA
from policies.common.optim import gradient_step
from policies.diffusion import loss as loss_fns
from policies.diffusion.config import DiffusionPolicyConfig
from policies.diffusion.model import DiffusionPolicy

DEFAULT_OBS_KEYS = (K.EEF_POS, K.GRIPPER, K.OBJECT_STATE, K.GOAL)


# =========================================================================================== config
@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)  # episode stores; several are concatenated
    obs_keys: list[str] = field(default_factory=lambda: list(DEFAULT_OBS_KEYS))  # store keys the policy sees
    # all | successes: imitate every episode, or only those whose meta/success is True (filtered BC of a store
    # that holds policy rollouts; RL-100's re-IL on the grown store, robotstack/pipeline)
    episodes: Literal["all", "successes"] = "all"


# The policy section IS DiffusionPolicyConfig (same fields, defaults, validation), minus the two fields read
# from the episode store. Derived, not copied: a new policy field is configurable here without an edit.
DATA_FIELDS = ("obs_shapes", "action_dim")


def _section_of(cls: type, drop: tuple[str, ...], extra: tuple = ()) -> type:
    hints = typing.get_type_hints(cls)
    fields = [(f.name, hints[f.name], dataclasses.field(default=f.default, default_factory=f.default_factory))
              for f in dataclasses.fields(cls) if f.name not in drop] + list(extra)
    return dataclasses.make_dataclass(f"{cls.__name__}Section", fields, namespace={"__doc__":
                                      f"{cls.__name__} without {', '.join(drop)} (read from the store)."})


# policy.kind picks the registry entry trained: "diffusion", or "mlp_bc" (policies/bc: regression BC baseline on
# the same encoder, normalization and To/T/Ta; its head has denoiser.mlp_width x mlp_depth; scheduler unused).
IL_POLICIES = ("diffusion", "mlp_bc")
PolicySection = _section_of(DiffusionPolicyConfig, DATA_FIELDS, extra=(("kind", str, field(default="diffusion")),))
PolicySection.__module__ = __name__


@dataclass
class TrainConfig(LoopConfig):
    """The shared loop fields (train/common.py LoopConfig, whose defaults are this stage's) plus IL's own."""

    betas: tuple[float, float] = (0.95, 0.999)
    ema_decay: float = 0.9999  # max EMA decay (diffusion_policy's warm-up schedule, power 0.75)
    ema_power: float = 0.75
    eval_every: int = 0  # 0 = evaluate only after the last step (if eval.episodes > 0)
    device: Literal["cpu", "cuda", "auto"] = "cpu"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_at_least(0, "eval_every")


@dataclass
class EvalConfig:
    episodes: int = 20  # 0 = no evaluation during training
    sampler: str = "ddim"
    steps: int = 10  # denoising steps K
    num_envs: int = 1  # > 1: gymnasium AsyncVectorEnv subprocesses
    seed: int = 100_000  # seed of the first eval episode (away from the seeds demos are recorded with)
    max_episode_steps: int = 0  # 0 = the task's own limit
    ema: bool = True  # evaluate the EMA weights


@dataclass
class ILConfig:
    task: str = ""  # sim task the policy is evaluated in, e.g. push or mw:push-v3
    action_mode: str = "delta"  # end-effector action mode (core/ee_action.py): "delta" | "absolute"; the stores must match
    data: DataConfig = field(default_factory=DataConfig)
    policy: PolicySection = field(default_factory=PolicySection)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if not self.task:
            raise ConfigError("config task: required (e.g. task: push, or task: mw:push-v3)")
        if not self.data.paths:
            raise ConfigError("config data.paths: at least one episode store path is required")
        ee.check_mode(self.action_mode, "config action_mode")
        if not self.data.obs_keys:
            raise ConfigError("config data.obs_keys: at least one observation key is required")
        if self.eval.sampler not in ("ddim", "ddpm"):
            raise ConfigError(f"config eval.sampler: {self.eval.sampler!r} is not 'ddim' or 'ddpm'")
        if self.eval.episodes < 0 or self.eval.num_envs < 1 or self.eval.steps < 1:
            raise ConfigError("config eval: need episodes >= 0, num_envs >= 1 and steps >= 1")
        if self.policy.kind not in IL_POLICIES:
            raise ConfigError(f"config policy.kind: {self.policy.kind!r} is not one of {IL_POLICIES}")
        # the policy section is validated in full by building a DiffusionPolicyConfig with placeholder shapes
        base = policy_config(self, {k: ((96, 96, 3) if K.is_image_key(k) else (1,)) for k in self.data.obs_keys}, 1)
        if self.policy.kind == "mlp_bc":
            MLPBCConfig(base)


def policy_config(cfg: ILConfig, obs_shapes: dict[str, tuple[int, ...]], action_dim: int) -> DiffusionPolicyConfig:
    section = {f.name: getattr(cfg.policy, f.name) for f in dataclasses.fields(cfg.policy) if f.name != "kind"}
    return DiffusionPolicyConfig(obs_shapes=obs_shapes, action_dim=action_dim, **section)


# ============================================================================================= data
@dataclass
class TrainData:
    arrays: dict[str, np.ndarray]  # key -> (N, ...) all frames, RAM copy
    episode_ends: np.ndarray  # (E,)
    sampler: SequenceSampler  # M windows: obs keys (To, ...), action (T, Da)
    obs_shapes: dict[str, tuple[int, ...]]
    action_dim: int


def load_data(cfg: ILConfig) -> TrainData:
    """Load `data.obs_keys` + action of every store into RAM, concatenated, and window them."""
    keys = [*cfg.data.obs_keys, K.ACTION]
    for path in cfg.data.paths:
        if not Path(path).exists():
            raise ConfigError(f"config data.paths: store {path} does not exist (record one with `robotstack "
                              f"record --task {cfg.task} --out {path}`)")
    try:
        store_mode = stores_action_mode(cfg.data.paths)
        arrays, episode_ends, specs = load_stores(cfg.data.paths, keys,
                                                  successes_only=cfg.data.episodes == "successes")
    except StoreError as exc:
        raise ConfigError(f"config data.paths / data.obs_keys: {exc}") from exc
    if store_mode != cfg.action_mode:  # the same numbers mean a step in one mode and a target in the other
        raise ConfigError(f"config action_mode={cfg.action_mode!r} but the store(s) {cfg.data.paths} hold "
                          f"action_mode {store_mode!r} actions; set action_mode={store_mode} or record "
                          f"with --action-mode {cfg.action_mode}")
    p = cfg.policy
    sampler = SequenceSampler(arrays, episode_ends, p.horizon, **policy_padding(p.horizon, p.n_obs_steps), keys=keys,
                              key_horizons={k: p.n_obs_steps for k in cfg.data.obs_keys})
    if len(sampler) == 0:
        raise ConfigError(f"config data.paths: no training windows of horizon {p.horizon} in {cfg.data.paths}")
    obs_shapes = {k: tuple(specs[k][0]) for k in cfg.data.obs_keys}
    return TrainData(arrays, episode_ends, sampler, obs_shapes, int(specs[K.ACTION][0][0]))


def batch_to_torch(raw: dict[str, np.ndarray], obs_keys: list[str], device: torch.device) -> dict[str, Any]:
    """sampler output -> {"obs": {key: (b, To, ...)}, "action": (b, T, Da)}; images stay uint8."""
    obs = {k: torch.from_numpy(np.ascontiguousarray(raw[k])).to(device) for k in obs_keys}
    return {"obs": obs, "action": torch.from_numpy(np.ascontiguousarray(raw[K.ACTION])).to(device)}


# ========================================================================================= builders
def pick_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("config train.device: cuda requested but torch sees no GPU")
        local = int(os.environ.get("LOCAL_RANK", info.rank))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def build_policy(cfg: ILConfig, data: TrainData) -> DiffusionPolicy | MLPBCPolicy:
    torch.manual_seed(cfg.train.seed)  # same seed -> same initial weights on every rank
    base = policy_config(cfg, data.obs_shapes, data.action_dim)
    policy = MLPBCPolicy(MLPBCConfig(base)) if cfg.policy.kind == "mlp_bc" else DiffusionPolicy(base)
    policy.fit_normalizer({k: data.arrays[k] for k in (*base.low_dim_keys, K.ACTION)})
    return policy


def build_optimizer(cfg: ILConfig, policy: nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    return torch.optim.AdamW(policy.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)


# ============================================================================================= loss
def diffusion_noise(policy: DiffusionPolicy, batch_size: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Timesteps (B,) and noise (B, T, Da) for the global batch, drawn in the order compute_loss draws them."""
    c = policy.config
    t = torch.randint(0, c.scheduler.num_train_timesteps, (batch_size,), generator=gen)
    eps = torch.randn((batch_size, c.horizon, c.action_dim), generator=gen, dtype=torch.float32)
    return t, eps


def il_loss(policy: DiffusionPolicy, batch: dict[str, Any], t: torch.Tensor, eps: torch.Tensor
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """policies.diffusion.loss.compute_loss with explicit timesteps t (b,) and noise eps (b, T, Da), so a rank
    can be handed its shard of the global draw. -> (loss, detached metric tensors)."""
    cfg = policy.config
    x0 = policy.normalizer.normalize("action", batch["action"].to(torch.float32))
    enc = policy.encode_obs(batch["obs"])
    x_t = policy.schedule.add_noise(x0, eps, t)
    l_eps = loss_fns.epsilon_loss(policy.denoiser(x_t, t, enc.cond), eps)
    loss, metrics = l_eps, {"loss_eps": l_eps.detach()}
    if enc.kl is not None:
        l_kl = loss_fns.kl_loss(enc.kl)
        loss, metrics["loss_kl"] = loss + cfg.beta_kl * l_kl, l_kl.detach()
    if enc.recon is not None:
        l_rec = loss_fns.recon_loss(enc.recon, enc.state)
        loss, metrics["loss_recon"] = loss + cfg.beta_recon * l_rec, l_rec.detach()
    metrics["loss"] = loss.detach()
    return loss, metrics


def bc_loss(policy: MLPBCPolicy, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """policy.kind=mlp_bc: MSE of the normalized action chunk (policies/bc/loss.py); no diffusion draws used."""
    return policy.compute_loss(batch)


class LossModule(nn.Module):
    """Wraps the policy so the loss runs inside forward(): DDP only syncs gradients of its forward pass."""

    def __init__(self, policy: DiffusionPolicy | MLPBCPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, Any], t: torch.Tensor, eps: torch.Tensor):
        if isinstance(self.policy, MLPBCPolicy):
            return bc_loss(self.policy, batch)
        return il_loss(self.policy, batch, t, eps)


# ====================================================================================== checkpoints
@functools.lru_cache(maxsize=None)
def task_spec(task: str, action_mode: str = ee.DELTA) -> dict:
    """The env's task spec (sim base_env.task_spec(): control rate, action names, the whole end-effector contract
    core/ee_action.py EEActionSpec.to_dict() for Panda envs, robot, success criterion as data), carried into
    checkpoints and from there into export manifests, so the on-robot runtime acts exactly as the training sim."""
    import sim

    env = sim.make(task, action_mode=action_mode)
    try:
        return json.loads(json.dumps(env.unwrapped.task_spec()))  # plain JSON types (tuples -> lists)
    finally:
        env.close()


def save_all(run_dir: Path, step: int, cfg: ILConfig, policy: DiffusionPolicy, ema: EMA,
             optimizer: torch.optim.Optimizer, data: TrainData, log_window: tuple[float, int] = (0.0, 0)) -> Path:
    extra = {"stage": "il", "step": step, "task": cfg.task, "obs_keys": cfg.data.obs_keys,
             "data_paths": cfg.data.paths, "n_episodes": int(len(data.episode_ends)),
             "eval": to_dict(cfg.eval), "task_spec": task_spec(cfg.task, cfg.action_mode)}
    # the partial loss-logging window is state too: without it a resumed run logs a different mean
    state = {"seed": cfg.train.seed, "ema_step": ema.step, "log_window": list(log_window)}
    return save_run_checkpoint(run_dir, step, policy, optimizer, ema.averaged, extra=extra, state=state,
                               keep=cfg.train.keep_checkpoints)


def restore(run_dir: Path, policy: DiffusionPolicy, ema: EMA, optimizer: torch.optim.Optimizer
            ) -> tuple[int, tuple[float, int]]:
    """-> (the step to resume at, the partial loss-logging window (sum, count))."""
    meta = restore_run_checkpoint(run_dir, policy, optimizer, ema.averaged)
    ema.step = int(meta.get("ema_step", meta["step"]))
    window = meta.get("log_window", [0.0, 0])
    return int(meta["step"]), (float(window[0]), int(window[1]))


# ======================================================================================= evaluation
def evaluate_policy(cfg: ILConfig, policy: DiffusionPolicy, ema: EMA, run_dir: Path, step: int) -> dict:
    from robotstack.eval.rollout import evaluate  # lazy: imports the sim (MuJoCo)

    model = ema.averaged if cfg.eval.ema else policy
    was_training = model.training
    model.eval()
    e = cfg.eval
    try:
        result = evaluate(model, cfg.task, episodes=e.episodes, seed=e.seed, num_envs=e.num_envs,
                          sampler=e.sampler, steps=e.steps, max_episode_steps=e.max_episode_steps or None,
                          action_mode=cfg.action_mode,
                          out_dir=Path(run_dir) / "eval" / f"step_{step}", show_progress=False)
    finally:
        model.train(was_training)
    return result.summary()


# ============================================================================================= loop
def train(cfg: ILConfig, run_dir: str | Path, resume: bool = False, show_progress: bool = True,
          stop_at: int | None = None) -> dict:
    """Train (or resume) to cfg.train.steps; `stop_at` ends the run early right after the step-`stop_at`
    checkpoint, exactly as a kill after that checkpoint would (used by the resume test). Ctrl-C saves a
    checkpoint at the current step and returns (summary["interrupted"] True). -> summary dict."""
    run_dir = Path(run_dir)
    info = init_distributed()
    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = pick_device(t.device, info)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / CONFIG_NAME)

    data = load_data(cfg)
    policy = build_policy(cfg, data).to(device)
    ema = EMA(policy, power=t.ema_power, max_decay=t.ema_decay)
    optimizer = build_optimizer(cfg, policy)
    # optimizer state lands on its params' device
    start, (window_loss, window_n) = restore(run_dir, policy, ema, optimizer) if resume else (0, (0.0, 0))
    model = LossModule(policy).train()
    if info.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    if t.batch_size % info.world_size:
        raise ConfigError(f"config train.batch_size={t.batch_size} is not divisible by {info.world_size} processes")

    logger = RunLogger(run_dir, enabled=info.is_main)
    if info.is_main and resume:
        truncate_metrics(run_dir, start)  # drop rows logged after the checkpoint we resume from
    end = t.steps if stop_at is None else min(t.steps, stop_at)
    n_windows = len(data.sampler)
    last_eval: dict = {}
    steps_in_window = 0  # steps/s counts only this process's steps
    t_window = t0 = time.perf_counter()
    bar = progress_bar(f"train il {cfg.task}", enabled=show_progress and info.is_main)
    task_id = bar.add_task("train", total=t.steps, completed=start, status="")
    bar.start()
    interrupted = False
    try:
        with StopRequest() as stop:
            for step in range(start, end):
                lr = t.lr_at(step)
                set_lr(optimizer, lr)
                idx = shard(numpy_rng(t.seed, step).integers(0, n_windows, size=t.batch_size), info)
                batch = batch_to_torch(data.sampler.sample_batch(idx), cfg.data.obs_keys, device)
                ts, eps = diffusion_noise(policy, t.batch_size, torch_gen(t.seed, step, stream=1))
                ts, eps = shard(ts, info).to(device), shard(eps, info).to(device)
                torch.manual_seed(step_seed(t.seed, step, stream=2 + info.rank))  # crop / VIB draws
                loss, metrics = model(batch, ts, eps)
                gradient_step(optimizer, loss, policy.parameters(), t.grad_clip)
                ema.update(policy)
                window_loss += float(metrics["loss"])
                window_n += 1
                steps_in_window += 1
                done = step + 1

                if t.log_due(done):
                    mean_loss = window_loss / window_n
                    if info.world_size > 1:  # report the global-batch mean
                        buf = torch.tensor([mean_loss], dtype=torch.float64, device=device)
                        dist.all_reduce(buf)
                        mean_loss = float(buf) / info.world_size
                    now = time.perf_counter()
                    sps = steps_in_window / max(now - t_window, 1e-9)
                    logger.log(done, {"loss": mean_loss, "lr": lr, "steps_per_s": sps,
                                      "samples_per_s": sps * t.batch_size})
                    bar.update(task_id, status=f"loss {mean_loss:.4f}  {sps:5.1f} steps/s")
                    window_loss, window_n, steps_in_window, t_window = 0.0, 0, 0, now
                bar.update(task_id, completed=done)

                is_last = done == t.steps
                if cfg.eval.episodes and ((t.eval_every and done % t.eval_every == 0) or is_last):
                    if info.is_main:
                        t_eval = time.perf_counter()
                        last_eval = evaluate_policy(cfg, policy, ema, run_dir, done)
                        logger.log(done, {"eval/success_rate": last_eval["success_rate"],
                                          "eval/mean_length": last_eval["mean_length"]})
                        t_window += time.perf_counter() - t_eval  # keep eval time out of steps/s
                    if info.world_size > 1:
                        dist.barrier()
                interrupted = stop.any_rank(info, device)
                if t.checkpoint_due(done, end, interrupted):
                    if info.is_main:
                        save_all(run_dir, done, cfg, policy, ema, optimizer, data, (window_loss, window_n))
                    if info.world_size > 1:
                        dist.barrier()
                if interrupted:
                    end = done
                    break
    finally:
        bar.stop()
        logger.close()
    wall = time.perf_counter() - t0
    steps_run = max(0, end - start)
    summary = {"run_dir": str(run_dir), "task": cfg.task, "steps": end, "steps_this_run": steps_run,
               "wall_s": wall, "samples_per_s": steps_run * t.batch_size / wall if wall > 0 else 0.0,
               "world_size": info.world_size, "n_windows": n_windows, "n_episodes": int(len(data.episode_ends)),
               "final_loss": _last_logged(run_dir, "loss") if info.is_main else None, "interrupted": interrupted}
    if last_eval:
        summary |= {f"eval_{k}": v for k, v in last_eval.items()}
    if info.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _last_logged(run_dir: Path, key: str) -> float | None:
    values = [row[key] for row in read_metrics(run_dir) if key in row]
    return values[-1] if values else None


# ============================================================================================= main
def resolve_config(config: str | None, overrides: list[str], resume: str | None) -> ILConfig:
    return resolve_stage_config(ILConfig, "train il", config, overrides, resume)


def default_run_dir(cfg: ILConfig) -> Path:
    return Path("runs") / "il" / f"{cfg.task.replace(':', '_')}_{time.strftime('%Y%m%d_%H%M%S')}"


def main(config: str | None, overrides: list[str], resume: str | None = None, out: str | None = None,
         show_progress: bool = True) -> dict:
    cfg = resolve_config(config, overrides, resume)
    run_dir = run_dir_for(resume, out, default_run_dir(cfg))
    summary = train(cfg, run_dir, resume=bool(resume), show_progress=show_progress)
    if init_distributed().is_main:
        print_summary("train il", summary)
        if summary["interrupted"]:
            print(f"interrupted: checkpoint saved at step {summary['steps']}; continue with "
                  f"`robotstack train il --resume {run_dir}`")
    if dist.is_initialized():
        dist.destroy_process_group()
    return summary
