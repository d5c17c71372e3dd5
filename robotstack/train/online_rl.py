"""Stage 3 of RL-100: online PPO over the denoising steps (`robotstack train online-rl`, rl100.md §4.4, §5, §6).

Read top to bottom: config -> builders (policy made RL-ready, value, student; every check before any work) ->
advantages (GAE) -> the PPO update (named functions) -> checkpoints -> evaluation -> the loop -> main.

Glossary: E parallel envs, N decisions per update, K denoising steps, T horizon, Ta = n_c executed actions
(one decision = one executed chunk = n_c env steps), Da action dim, Dc encoder-feature width.

One update: collect ~`train.rollout_env_steps` env steps with the current policy (robotstack/train/rollouts.py:
stochastic DDIM, eta 1, K 10, sigma~ in [sigma_min, sigma_max]; per decision the chain, its K log-probs and the
features), then GAE over each env's decision sequence (gamma^{n_c}, lambda 0.95; a terminal stops bootstrapping,
a truncation bootstraps from V of the final observation), advantages normalised over the batch, then
`ppo.epochs` passes of minibatches: denoise_ppo.ppo_update (clip 0.2, the advantage broadcast to all K steps, one
optimiser step per denoising step as the official code), a clipped value loss on V (own Adam, lr 3e-4), and,
with distill.enabled, one same-noise consistency step of the one-step student against the current teacher
(distill.rl100_same_noise_loss, own optimiser: L_RL + lambda_CD L_CD with separate optimisers, as the code).

Choices where the spec leaves room (rl100.md §13), recorded in the checkpoint's extra and summary.json:
- Encoder frozen online (the official code unfreezes it with recon/VIB / 10). Frozen features make the stored
  `cond` the exact PPO input (the first ratio of every update is 1, asserted each update as ratio0_max_dev),
  keep the value's input fixed, and keep the student (which reads the teacher's encoder) consistent. The
  encoder regularisers therefore do not enter here (the paper's "regularisers / 10 in the RL stages" is moot
  while the encoder is frozen; RGB runs included).
- RGB observations: each decision encodes its camera window once (rollouts.py); the collection's
  next-observation features are encoded in passes bounded by image pixels (policies/rl/features.py), and PPO
  reads the stored features only. Env workers render headless (MUJOCO_GL defaults to egl when cameras are on).
- The IL checkpoint's scheduler is converted for RL (rl.grid: rl100): the RL-100 DDIM grid 91..1 (leading spacing,
  steps_offset 1, last step to abar_0), eta 1, sigma in [0.01, sigma_max] with sigma_max from the paper (0.8
  single-action, 0.1 chunks) unless given. Training used all 100 timesteps, so only the inference grid changes;
  evaluation stays deterministic DDIM-K (ddim_eta of the checkpoint) on that grid. rl.grid: policy keeps the
  checkpoint's grid.
- Linear lr decay to 0 over the env-step budget for actor and critic; no entropy term; value clip = ppo.value_clip.

Reading the metrics: ratio0_max_dev is ~1e-5..1e-4, not 0: the behaviour log-probs come from batches of the
envs that asked for a decision, the update's from a minibatch, and float32 matmuls round differently per batch
size; at sigma~ = 0.01 a 1e-7 change of the mean moves a log-prob summed over Ta*Da dims by ~1e-4. A stochastic
encoder or live dropout shows up as O(1). train/success_rate counts the episodes completed within the update's
collection; the (at most one per env) episode cut at its end is not counted, a small bias towards short
(successful) episodes.

Run dir (the layout of train il; robotstack/train/common.py):
    RUN_DIR/config.json, metrics.csv (+ tb/)       one row per update, step = env steps
    RUN_DIR/checkpoints/step_N, latest            the RL'd diffusion policy (N = env steps)
    RUN_DIR/value/step_N/                         V weights + its optimizer (resume)
    RUN_DIR/student/checkpoints/step_N, latest    the one-step consistency student (distill.enabled)
    RUN_DIR/eval/step_N[_student]/                per-episode JSON of the evaluations
    RUN_DIR/summary.json
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from robotstack.core.config import save_config, to_dict
from robotstack.core.errors import ConfigError
from robotstack.core.progress import print_summary, progress_bar
from robotstack.train.common import (CONFIG_NAME, RunLogger, StopRequest, load_training_state, numpy_rng,
                                     read_metrics, resolve_stage_config, restore_run_checkpoint, run_dir_for,
                                     save_run_checkpoint, save_training_state, set_lr, torch_gen, truncate_metrics)
from robotstack.train.rl_math import gae
from robotstack.train.rollouts import Collector, Rollout

from policies.checkpoint import CheckpointError, load_checkpoint, read_config, require_delta_actions
from policies.common.optim import gradient_step
from policies.consistency.config import ConsistencyConfig
from policies.consistency.model import ConsistencyPolicy
from policies.diffusion.model import DiffusionPolicy
from policies.rl.critics import ValueNet, clipped_value_loss, load_iql_critics, warm_start_value
from policies.rl.denoise_ppo import (UPDATE_MODES, DenoisePPOConfig, DenoisingChain, chain_log_probs,
                                     normalize_advantage, ppo_update, rl100_scheduler)

ENCODER_MODE = "frozen"


# =========================================================================================== config
@dataclass
class EnvConfig:
    num_envs: int = 2  # > 1: gymnasium AsyncVectorEnv subprocesses
    max_episode_steps: int = 0  # 0 = the task's own limit
    shaped_reward: bool = False  # the task's dense reward (+1 on success); default sparse float(success)
    # domain randomisation of the rollout envs (sim.base_env.Randomize keys: friction, mass, object_pose,
    # action_latency_steps, obs_noise); {} = nominal. Evaluation always runs the nominal task, so a randomised
    # run is compared with a plain one on the same episodes.
    randomize: dict = field(default_factory=dict)


@dataclass
class RLConfig:
    """How the IL checkpoint's sampler is made RL-ready (rl100.md §2)."""

    grid: str = "rl100"  # rl100: DDIM 91..1 (the RL-100 code's grid) | policy: keep the checkpoint's grid
    steps: int = 10  # K denoising steps, all fine-tuned
    eta: float = 1.0
    sigma_min: float = 0.01
    sigma_max: float | None = None  # None = the paper's: 0.8 when Ta = 1, else 0.1 (chunks)


@dataclass
class PPOConfig:
    clip_eps: float = 0.2
    update: str = "per_step"  # per_step (official: one actor step per denoising step) | batched
    gamma_denoise: float | None = None  # None = RL-100 (A broadcast unchanged); a float = DPPO's variant
    logprob: str = "sum"  # sum = RL-100 (over the executed dims) | mean = DPPO's per-dim average (denoise_ppo)
    epochs: int = 5  # K_epochs (code: 10 yaml / 5 script)
    minibatch_size: int = 128  # decisions
    lr: float = 3.0e-6  # actor (code 3e-6 yaml / 5.8e-6 script)
    critic_lr: float = 3.0e-4
    lr_decay: bool = True  # linear to 0 at train.env_steps (actor and critic)
    value_clip: float | None = 0.2  # value clipping eps; null = plain MSE
    max_grad_norm: float = 0.5
    adam_eps: float = 1.0e-5
    value_hidden: list[int] = field(default_factory=lambda: [512, 512])  # fresh V only (critic: "")
    # Fresh V only: epochs of plain-MSE regression of V on the first collection's GAE returns before the first
    # actor step (DPPO's critic warm-up). Value clipping bounds V's move to value_clip per update relative to the
    # V that collected the batch, so a fresh V (outputs ~0) needs ~|return| / value_clip updates to reach returns
    # of a dense reward (-5 on shaped reach: value mean 0.04 -> -2.2 in 6 updates), and the advantages of those
    # updates come from that lagging baseline. 0 = off (the default: sparse returns lie in [0, 1]).
    value_warmup_epochs: int = 0


@dataclass
class GAEConfig:
    gamma: float = 0.99  # per env step; gamma^{n_c} between decisions
    lam: float = 0.95


@dataclass
class DistillConfig:
    enabled: bool = False  # joint consistency distillation of a one-step student
    lr: float = 1.0e-4
    teacher_steps: int = 0  # K of the DDIM teacher; 0 = rl.steps
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    """Budget in env steps (not optimiser steps, so not common.LoopConfig); lr lives in ppo.*."""

    env_steps: int = 50_000
    rollout_env_steps: int = 4096  # env steps collected per update, over all envs
    seed: int = 0
    num_threads: int = 1
    checkpoint_every: int = 1  # updates; the last update and Ctrl-C always save
    keep_checkpoints: int = 2  # newest step_N dirs kept; 0 = all


@dataclass
class EvalConfig:
    episodes: int = 20  # 0 = no evaluation
    every: int = 0  # updates; 0 = only after the last update
    initial: bool = False  # also evaluate before the first update (the converted starting policy, step 0)
    num_envs: int = 1
    seed: int = 100_000
    max_episode_steps: int = 0


@dataclass
class RayConfig:
    address: str = ""  # "" = local vector envs; "local" starts a local Ray instance; else a cluster address
    num_workers: int = 2
    envs_per_worker: int = 1


@dataclass
class OnlineRLConfig:
    task: str = ""
    policy: str = ""  # diffusion checkpoint dir (IL or offline-rl), e.g. runs/il/push/checkpoints/latest
    policy_weights: str = "auto"  # auto (EMA when present) | ema | model
    critic: str = ""  # an offline-rl RUN_DIR/critics dir (IQL V warm start); "" = a fresh V
    student: str = ""  # "" = built from the policy (distill.enabled) | a consistency (rl100) checkpoint dir
    env: EnvConfig = field(default_factory=EnvConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    gae: GAEConfig = field(default_factory=GAEConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if not self.task:
            raise ConfigError("config task: required (e.g. task: push)")
        if not self.policy:
            raise ConfigError("config policy: the diffusion checkpoint dir is required (policy=RUN/checkpoints/latest)")
        if self.policy_weights not in ("auto", "ema", "model"):
            raise ConfigError(f"config policy_weights: {self.policy_weights!r} not in auto|ema|model")
        if self.rl.grid not in ("rl100", "policy"):
            raise ConfigError(f"config rl.grid: {self.rl.grid!r} not in rl100|policy")
        if self.ppo.update not in UPDATE_MODES:
            raise ConfigError(f"config ppo.update: {self.ppo.update!r} not in {UPDATE_MODES}")
        checks = {"env.num_envs": self.env.num_envs >= 1, "rl.steps": self.rl.steps >= 1,
                  "ppo.epochs": self.ppo.epochs >= 1, "ppo.minibatch_size": self.ppo.minibatch_size >= 1,
                  "ppo.value_warmup_epochs": self.ppo.value_warmup_epochs >= 0,
                  "train.env_steps": self.train.env_steps >= 1,
                  "train.rollout_env_steps": self.train.rollout_env_steps >= 1,
                  "eval.episodes": self.eval.episodes >= 0, "eval.num_envs": self.eval.num_envs >= 1,
                  "gae.gamma": 0 < self.gae.gamma <= 1, "gae.lam": 0 <= self.gae.lam <= 1,
                  "ray.num_workers": self.ray.num_workers >= 1, "ray.envs_per_worker": self.ray.envs_per_worker >= 1}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"config {', '.join(bad)}: out of range (counts >= 1, ppo.value_warmup_epochs >= 0, "
                              f"gamma in (0, 1], lam in [0, 1])")
        # the PPO knobs are validated by the one PPO config
        self.ppo_config()
        if self.env.randomize:  # keys and ranges checked by the sim's own reader, before any work
            from sim.base_env import Randomize

            try:
                Randomize.read(self.env.randomize)
            except ConfigError as exc:
                raise ConfigError(f"config env.{exc}") from exc

    def ppo_config(self) -> DenoisePPOConfig:
        return DenoisePPOConfig(steps=self.rl.steps, eta=self.rl.eta, clip_eps=self.ppo.clip_eps,
                                gamma_denoise=self.ppo.gamma_denoise, update=self.ppo.update,
                                max_grad_norm=self.ppo.max_grad_norm, logprob=self.ppo.logprob)


# ========================================================================================= builders
def rl_ready(policy: DiffusionPolicy, rc: RLConfig) -> DiffusionPolicy:
    """A copy of the policy whose scheduler samples RL-100's stochastic DDIM (see the module docstring)."""
    sc, c = policy.config.scheduler, policy.config
    sigma_max = rc.sigma_max if rc.sigma_max is not None else (0.8 if c.n_action_steps == 1 else 0.1)
    keep = {k: getattr(sc, k) for k in ("num_train_timesteps", "beta_schedule", "clip_sample", "clip_sample_range",
                                        "prediction_type", "set_alpha_to_one", "default_sampler", "ddim_eta")}
    if rc.grid == "rl100":
        new = rl100_scheduler(sigma_max=sigma_max, sigma_min=rc.sigma_min, **keep, num_inference_steps=rc.steps)
        new.rl_eta = rc.eta
    else:
        new = type(sc)(**{**to_dict(sc), "rl_eta": rc.eta, "sigma_min": rc.sigma_min, "sigma_max": sigma_max,
                          "num_inference_steps": rc.steps})
    out = DiffusionPolicy(c.replace(scheduler=new))
    out.load_state_dict(policy.state_dict(), strict=True)
    out.eval()  # no dropout / batch-norm updates: the first ratio must be 1 (rl100.md §12)
    out.obs_encoder.requires_grad_(False)  # frozen encoder online (ENCODER_MODE)
    out.normalizer.requires_grad_(False)
    return out


def read_task_checkpoint(key: str, path: Path, task: str) -> tuple[str, dict]:
    """The config of the checkpoint at `path` (given as config `key`), refused when missing / malformed or of
    another task than `task`. -> (policy name, the checkpoint's extra)."""
    try:
        name, _, extra = read_config(path)
    except CheckpointError as exc:
        raise ConfigError(f"config {key} {path}: {exc}") from exc
    if extra.get("task") != task:
        raise ConfigError(f"config {key} {path}: a checkpoint of task {extra.get('task')!r}, but config task is "
                          f"{task!r}")
    return name, extra


def load_policy(cfg: OnlineRLConfig) -> tuple[DiffusionPolicy, dict]:
    """The policy checkpoint, refused before any work when it is missing, not a diffusion policy or of another
    task. -> (RL-ready policy, the checkpoint's extra)."""
    path = Path(cfg.policy)
    name, extra = read_task_checkpoint("policy", path, cfg.task)
    require_delta_actions(extra, f"config policy {path}")
    policy = load_checkpoint(path, weights=cfg.policy_weights)
    if not isinstance(policy, DiffusionPolicy):
        raise ConfigError(f"config policy {path}: needs a diffusion policy checkpoint, got {name!r}")
    return rl_ready(policy, cfg.rl), extra


def load_value(cfg: OnlineRLConfig, policy: DiffusionPolicy) -> tuple[ValueNet, str]:
    """V warm-started from the offline IQL V (rl100.md §5) or fresh; refuses critics of another feature width
    or chunk length. -> (V, where it came from)."""
    feat_dim, n_c = policy.obs_encoder.out_dim, policy.config.n_action_steps
    if not cfg.critic:
        torch.manual_seed(cfg.train.seed)
        return ValueNet(feat_dim, tuple(cfg.ppo.value_hidden)), "fresh"
    try:
        _, iql_v, meta = load_iql_critics(cfg.critic)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise ConfigError(f"config critic {cfg.critic}: {exc}") from exc
    if int(meta["feat_dim"]) != feat_dim:
        raise ConfigError(f"config critic {cfg.critic}: critics read features of width {meta['feat_dim']}, the "
                          f"policy's encoder gives {feat_dim} (critics of another policy?)")
    if meta.get("n_c") is not None and int(meta["n_c"]) != n_c:
        raise ConfigError(f"config critic {cfg.critic}: critics were trained on chunks n_c={meta['n_c']}, the "
                          f"policy executes {n_c} actions per decision")
    return warm_start_value(iql_v), f"iql:{cfg.critic}"


def load_student(cfg: OnlineRLConfig, teacher: DiffusionPolicy) -> ConsistencyPolicy | None:
    """The one-step student (distill.enabled): built from the teacher (distill.build_student) or read from
    `student:`; it reads the teacher's (frozen) features, so its encoder and normalizer are the teacher's."""
    if not cfg.distill.enabled:
        if cfg.student:
            raise ConfigError(f"config student {cfg.student}: given but distill.enabled is false")
        return None
    from robotstack.train import distill as distill_stage

    if not cfg.student:
        dcfg = distill_stage.DistillConfig(policy=ConsistencyConfig(method="rl100"),
                                           train=distill_stage.TrainConfig(seed=cfg.train.seed))
        return distill_stage.build_student(dcfg, teacher)
    path = Path(cfg.student)
    name, _ = read_task_checkpoint("student", path, cfg.task)
    loaded = load_checkpoint(path, weights="auto")
    if not isinstance(loaded, ConsistencyPolicy) or loaded.method != "rl100":
        raise ConfigError(f"config student {path}: needs an rl100 consistency checkpoint, got {name!r}"
                          + (f" (method {loaded.method!r})" if isinstance(loaded, ConsistencyPolicy) else ""))
    student = ConsistencyPolicy(loaded.config.replace(base=teacher.config))  # the teacher's RL grid
    try:
        student.load_state_dict(loaded.state_dict(), strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"config student {path}: does not fit the policy {cfg.policy} ({exc})") from exc
    student.obs_encoder.load_state_dict(teacher.obs_encoder.state_dict())
    student.normalizer.load_state_dict(teacher.normalizer.state_dict())
    student.obs_encoder.requires_grad_(False).eval()
    student.normalizer.requires_grad_(False)
    return student


def check_ray(cfg: OnlineRLConfig) -> None:
    if cfg.ray.address:
        from robotstack.train.ray_rollouts import require_ray

        require_ray(f"config ray.address={cfg.ray.address!r}")


# ======================================================================================= advantages
def advantages(roll: Rollout, values: np.ndarray, next_values: np.ndarray, cfg: GAEConfig
               ) -> tuple[np.ndarray, np.ndarray]:
    """GAE per env sequence (rl_math.gae, gamma^{n_steps} between decisions) -> (advantages (N,), returns (N,))."""
    adv, ret = np.zeros(len(roll)), np.zeros(len(roll))
    start = 0
    for n in roll.lengths:
        s = slice(start, start + n)
        adv[s], ret[s] = gae(roll.reward[s], values[s], next_values[s], roll.terminated[s], roll.truncated[s],
                             cfg.gamma, cfg.lam, roll.n_steps[s])
        start += n
    return adv, ret


# ======================================================================================= the update
@dataclass
class Learner:
    policy: DiffusionPolicy
    value: ValueNet
    actor_opt: torch.optim.Optimizer
    critic_opt: torch.optim.Optimizer
    student: ConsistencyPolicy | None = None
    student_opt: torch.optim.Optimizer | None = None


def build_learner(cfg: OnlineRLConfig, policy: DiffusionPolicy, value: ValueNet,
                  student: ConsistencyPolicy | None) -> Learner:
    p = cfg.ppo
    actor_opt = torch.optim.Adam(policy.denoiser.parameters(), lr=p.lr, eps=p.adam_eps)
    critic_opt = torch.optim.Adam(value.parameters(), lr=p.critic_lr, eps=p.adam_eps)
    student_opt = (torch.optim.AdamW(student.denoiser.parameters(), lr=cfg.distill.lr)
                   if student is not None else None)
    return Learner(policy, value, actor_opt, critic_opt, student, student_opt)


def value_step(learner: Learner, cond: torch.Tensor, v_old: torch.Tensor, ret: torch.Tensor, cfg: PPOConfig) -> float:
    loss = clipped_value_loss(learner.value(cond), v_old, ret, cfg.value_clip)
    gradient_step(learner.critic_opt, loss, learner.value.parameters(), cfg.max_grad_norm)
    return float(loss.detach())


def distill_step(learner: Learner, cond: torch.Tensor, teacher_steps: int, grad_clip: float,
                 gen: torch.Generator) -> float:
    from robotstack.train.distill import rl100_same_noise_loss

    loss, _ = rl100_same_noise_loss(learner.student, learner.policy, cond, teacher_steps, gen)
    gradient_step(learner.student_opt, loss, learner.student.denoiser.parameters(), grad_clip)
    return float(loss.detach())


def value_targets(learner: Learner, roll: Rollout, gae_cfg: GAEConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """V of the decisions under the current value net and their GAE -> (values, advantages, returns), each (N,)."""
    with torch.no_grad():
        values = learner.value(torch.from_numpy(roll.cond)).double().numpy()
        next_values = learner.value(torch.from_numpy(roll.next_cond)).double().numpy()
    return (values, *advantages(roll, values, next_values, gae_cfg))


def warm_up_value(learner: Learner, roll: Rollout, cfg: OnlineRLConfig, rng: np.random.Generator) -> float:
    """ppo.value_warmup_epochs passes of unclipped MSE of V on the GAE returns of `roll` (recomputed with the
    current V each pass), after shifting V's output bias to the returns' mean (Adam at the critic lr moves a fresh
    output by ~lr per step: far too slow for returns of -10). -> the last pass's mean loss. The actor is untouched."""
    p, unclipped = cfg.ppo, replace(cfg.ppo, value_clip=None)
    cond = torch.from_numpy(roll.cond)
    values, _, ret = value_targets(learner, roll, cfg.gae)
    out_layer = [m for m in learner.value.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        out_layer.bias += float(ret.mean() - values.mean())
    loss = float("nan")
    for _ in range(p.value_warmup_epochs):
        ret = torch.from_numpy(value_targets(learner, roll, cfg.gae)[2]).float()
        perm, losses = torch.from_numpy(rng.permutation(len(roll))), []
        for start in range(0, len(roll), p.minibatch_size):
            idx = perm[start:start + p.minibatch_size]
            # plain MSE: with value_clip None the loss ignores its v_old argument
            losses.append(value_step(learner, cond[idx], ret[idx], ret[idx], unclipped))
        loss = float(np.mean(losses))
    return loss


def first_ratio_deviation(policy: DiffusionPolicy, batch: DenoisingChain, eta: float) -> float:
    """max |pi_theta / pi_old - 1| over the K steps of a minibatch before any step of this update: 0 up to float
    summation order (rl100.md §12 pitfall 1; a stochastic encoder or train-mode dropout would break it)."""
    with torch.no_grad():
        new = chain_log_probs(policy, batch.cond, batch.chain, batch.timesteps, batch.prev_timesteps, eta=eta)
    return float((new - batch.log_probs).exp().sub(1.0).abs().max())


def ppo_epochs(learner: Learner, roll: Rollout, cfg: OnlineRLConfig, rng: np.random.Generator,
               gen: torch.Generator) -> dict[str, float]:
    """GAE + `ppo.epochs` passes of minibatches over one rollout. -> mean stats."""
    p, ppo_cfg = cfg.ppo, cfg.ppo_config()
    cond = torch.from_numpy(roll.cond)
    values, adv_np, ret_np = value_targets(learner, roll, cfg.gae)
    adv = normalize_advantage(torch.from_numpy(adv_np).float())
    ret, v_old = torch.from_numpy(ret_np).float(), torch.from_numpy(values).float()
    chain, logp = torch.from_numpy(roll.chain), torch.from_numpy(roll.log_probs)
    ts, tps = torch.from_numpy(roll.timesteps), torch.from_numpy(roll.prev_timesteps)
    k_teacher = cfg.distill.teacher_steps or cfg.rl.steps
    sums: dict[str, float] = {}
    n, ratio0 = 0, None
    for _ in range(p.epochs):
        perm = torch.from_numpy(rng.permutation(len(roll)))
        for start in range(0, len(roll), p.minibatch_size):
            idx = perm[start:start + p.minibatch_size]
            batch = DenoisingChain(chain[idx], logp[idx], ts, tps, cond[idx], None, None)
            if ratio0 is None:
                ratio0 = first_ratio_deviation(learner.policy, batch, cfg.rl.eta)
            stats = ppo_update(learner.policy, learner.actor_opt, batch, adv[idx], ppo_cfg)
            stats["loss_v"] = value_step(learner, cond[idx], v_old[idx], ret[idx], p)
            if learner.student is not None:
                stats["loss_cd"] = distill_step(learner, cond[idx], k_teacher, cfg.distill.grad_clip, gen)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
    out = {("loss_pi" if k == "loss" else k): v / n for k, v in sums.items()}
    return out | {"ratio0_max_dev": ratio0, "value_mean": float(values.mean()), "adv_raw_std": float(adv_np.std()),
                  "return_mean": float(ret_np.mean()), "decisions": len(roll)}


# ====================================================================================== checkpoints
def _extra(cfg: OnlineRLConfig, teacher_extra: dict, value_from: str, env_steps: int) -> dict:
    return {"stage": "online-rl", "step": env_steps, "env_steps": env_steps, "task": cfg.task,
            "obs_keys": teacher_extra.get("obs_keys"), "task_spec": teacher_extra.get("task_spec"),
            "data_paths": teacher_extra.get("data_paths", []), "source_policy": cfg.policy,
            "value_from": value_from, "encoder": ENCODER_MODE, "rl": to_dict(cfg.rl)}


def save_all(run_dir: Path, env_steps: int, cfg: OnlineRLConfig, learner: Learner, teacher_extra: dict,
             value_from: str, state: dict) -> None:
    """V first, then the student, then the policy (whose `latest` swap marks the checkpoint complete)."""
    keep = cfg.train.keep_checkpoints
    vdir = run_dir / "value" / f"step_{env_steps}"
    vdir.mkdir(parents=True, exist_ok=True)
    save_file({k: t.detach().contiguous().clone() for k, t in learner.value.state_dict().items()},
              str(vdir / "value.safetensors"))
    save_training_state(vdir, env_steps, learner.critic_opt)
    if learner.student is not None:
        k = cfg.distill.teacher_steps or cfg.rl.steps
        save_run_checkpoint(run_dir / "student", env_steps, learner.student, learner.student_opt, keep=keep,
                            extra={**_extra(cfg, teacher_extra, value_from, env_steps), "stage": "online-rl-student",
                                   "method": "rl100", "teacher": str(run_dir / "checkpoints" / "latest"),
                                   "teacher_ddim_steps": k})
    save_run_checkpoint(run_dir, env_steps, learner.policy, learner.actor_opt, keep=keep, state=state,
                        extra=_extra(cfg, teacher_extra, value_from, env_steps))
    if keep:
        old = sorted((p for p in (run_dir / "value").glob("step_*")), key=lambda p: int(p.name[5:]))
        for p in old[:-keep]:
            shutil.rmtree(p, ignore_errors=True)


def restore_all(run_dir: Path, learner: Learner) -> dict:
    meta = restore_run_checkpoint(run_dir, learner.policy, learner.actor_opt)
    step = int(meta["step"])
    vdir = run_dir / "value" / f"step_{step}"
    if not (vdir / "value.safetensors").is_file():
        raise ConfigError(f"--resume {run_dir}: {vdir} is missing (the value of the step-{step} checkpoint)")
    learner.value.load_state_dict(load_file(str(vdir / "value.safetensors")), strict=True)
    load_training_state(vdir, learner.critic_opt)
    if learner.student is not None:
        s_meta = restore_run_checkpoint(run_dir / "student", learner.student, learner.student_opt)
        if int(s_meta["step"]) != step:
            raise ConfigError(f"--resume {run_dir}: student checkpoint at step {s_meta['step']}, policy at {step}")
    return meta


# ======================================================================================= evaluation
def evaluate_pair(cfg: OnlineRLConfig, learner: Learner, run_dir: Path, env_steps: int) -> dict[str, float]:
    """Teacher (deterministic DDIM-K) and, when distilling, student (one call) on the same episode seeds."""
    from robotstack.eval.rollout import evaluate  # lazy: imports the sim (MuJoCo)

    e = cfg.eval
    common = dict(episodes=e.episodes, seed=e.seed, num_envs=e.num_envs, show_progress=False,
                  max_episode_steps=e.max_episode_steps or None)
    out = {}
    res = evaluate(learner.policy, cfg.task, sampler="ddim", steps=cfg.rl.steps,
                   out_dir=run_dir / "eval" / f"step_{env_steps}", **common).summary()
    out |= {"eval/success_rate": res["success_rate"], "eval/ci95_low": res["ci95_low"],
            "eval/ci95_high": res["ci95_high"]}
    if learner.student is not None:
        res = evaluate(learner.student, cfg.task, steps=1, out_dir=run_dir / "eval" / f"step_{env_steps}_student",
                       **common).summary()
        out |= {"eval/student_success_rate": res["success_rate"], "eval/student_ci95_low": res["ci95_low"],
                "eval/student_ci95_high": res["ci95_high"]}
    learner.policy.eval()
    return out


# ============================================================================================= loop
def episode_seed_base(seed: int) -> int:
    """Training episodes use seeds base, base+1, ... (away from eval's 100_000 + i and the demos' small seeds)."""
    return 10_000_000 * (1 + seed)


def make_collector(cfg: OnlineRLConfig, policy: DiffusionPolicy):
    if cfg.ray.address:
        from robotstack.train.ray_rollouts import RayCollector

        return RayCollector(cfg.ray.address, cfg.ray.num_workers, cfg.ray.envs_per_worker, cfg.task, policy,
                            cfg.env.max_episode_steps or None, cfg.env.shaped_reward, cfg.train.num_threads,
                            cfg.env.randomize)
    return Collector(cfg.task, cfg.env.num_envs, policy.config, cfg.env.max_episode_steps or None,
                     cfg.env.shaped_reward, cfg.env.randomize)


def train(cfg: OnlineRLConfig, run_dir: str | Path, resume: bool = False, show_progress: bool = True,
          stop_after_updates: int | None = None) -> dict:
    """Run (or resume) to train.env_steps. `stop_after_updates` ends after that many updates of this call, right
    after their checkpoint (as a kill there would; the resume test). Ctrl-C stops at the current update
    (a collection in progress is dropped), saves and returns (summary["interrupted"] True)."""
    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    # every check before any work: policy (task, kind), critic (width, n_c), student, ray
    policy, teacher_extra = load_policy(cfg)
    value, value_from = load_value(cfg, policy)
    student = load_student(cfg, policy)
    check_ray(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / CONFIG_NAME)
    learner = build_learner(cfg, policy, value, student)
    update, env_steps, next_seed = 0, 0, 0
    if resume:
        meta = restore_all(run_dir, learner)
        update, env_steps, next_seed = int(meta["update"]), int(meta["env_steps"]), int(meta["next_seed"])
        truncate_metrics(run_dir, env_steps)
    logger = RunLogger(run_dir)
    bar = progress_bar(f"train online-rl {cfg.task}", show_progress)
    bar_task = bar.add_task("online", total=t.env_steps, completed=min(env_steps, t.env_steps), status="")
    t0 = time.perf_counter()
    interrupted, last_eval, updates_run = False, {}, 0
    collector = make_collector(cfg, policy) if env_steps < t.env_steps else None
    state = lambda: {"update": update, "env_steps": env_steps, "next_seed": next_seed, "seed": t.seed}  # noqa: E731
    if cfg.eval.episodes and cfg.eval.initial and not resume:
        logger.log(0, evaluate_pair(cfg, learner, run_dir, 0))
    bar.start()
    try:
        with StopRequest() as stop:
            while env_steps < t.env_steps:
                frac = env_steps / t.env_steps if cfg.ppo.lr_decay else 0.0
                set_lr(learner.actor_opt, cfg.ppo.lr * (1.0 - frac))
                set_lr(learner.critic_opt, cfg.ppo.critic_lr * (1.0 - frac))
                t_roll = time.perf_counter()
                roll = collector.collect(learner.policy, min(t.rollout_env_steps, t.env_steps - env_steps),
                                         episode_seed_base(t.seed) + next_seed, cfg.gae.gamma,
                                         torch_gen(t.seed, update, stream=1), steps=cfg.rl.steps, eta=cfg.rl.eta,
                                         stop=stop)
                if roll is None:  # Ctrl-C during collection: nothing of this update is kept
                    interrupted = True
                    save_all(run_dir, env_steps, cfg, learner, teacher_extra, value_from, state())
                    break
                t_upd = time.perf_counter()
                warmup = {}
                if update == 0 and value_from == "fresh" and cfg.ppo.value_warmup_epochs:
                    warmup = {"value_warmup_loss": warm_up_value(learner, roll, cfg,
                                                                 numpy_rng(t.seed, update, stream=4))}
                stats = warmup | ppo_epochs(learner, roll, cfg, numpy_rng(t.seed, update, stream=2),
                                            torch_gen(t.seed, update, stream=3))
                update, env_steps, next_seed = update + 1, env_steps + roll.env_steps, next_seed + roll.n_started
                updates_run += 1
                eps = roll.episodes
                row = stats | {
                    "update": update, "env_steps": env_steps, "lr": learner.actor_opt.param_groups[0]["lr"],
                    "train/episodes": len(eps),
                    "train/success_rate": float(np.mean([e["success"] for e in eps])) if eps else float("nan"),
                    "train/mean_length": float(np.mean([e["length"] for e in eps])) if eps else float("nan"),
                    "rollout_s": t_upd - t_roll, "update_s": time.perf_counter() - t_upd,
                    "env_steps_per_s": roll.env_steps / max(t_upd - t_roll, 1e-9)}
                done = env_steps >= t.env_steps
                if cfg.eval.episodes and ((cfg.eval.every and update % cfg.eval.every == 0) or done):
                    last_eval = evaluate_pair(cfg, learner, run_dir, env_steps)
                    row |= last_eval
                logger.log(env_steps, row)
                bar.update(bar_task, completed=min(env_steps, t.env_steps),
                           status=f"success {row['train/success_rate']:.2f}  clip {row['clip_frac']:.3f}  "
                                  f"kl {row['approx_kl']:.1e}")
                interrupted = stop.requested
                stopping = stop_after_updates is not None and updates_run >= stop_after_updates
                if done or interrupted or stopping or (t.checkpoint_every and update % t.checkpoint_every == 0):
                    save_all(run_dir, env_steps, cfg, learner, teacher_extra, value_from, state())
                if interrupted or stopping:
                    break
    finally:
        bar.stop()
        logger.close()
        if collector is not None:
            collector.close()
    rows = read_metrics(run_dir)
    train_sr = [r["train/success_rate"] for r in rows if "train/success_rate" in r]
    summary = {"run_dir": str(run_dir), "task": cfg.task, "env_steps": env_steps, "updates": update,
               "updates_this_run": updates_run, "wall_s": time.perf_counter() - t0,
               "train_success_rate": train_sr[-1] if train_sr else None, "value_from": value_from,
               "encoder": ENCODER_MODE, "ray": cfg.ray.address or "off", "interrupted": interrupted,
               "eval_success_rate": last_eval.get("eval/success_rate"),
               "student_eval_success_rate": last_eval.get("eval/student_success_rate")}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


# ============================================================================================= main
def resolve_config(config: str | None, overrides: list[str], resume: str | None) -> OnlineRLConfig:
    return resolve_stage_config(OnlineRLConfig, "train online-rl", config, overrides, resume)


def default_run_dir(cfg: OnlineRLConfig) -> Path:
    return Path("runs") / "online_rl" / f"{cfg.task.replace(':', '_')}_{time.strftime('%Y%m%d_%H%M%S')}"


def main(config: str | None, overrides: list[str], resume: str | None = None, out: str | None = None,
         show_progress: bool = True) -> dict:
    cfg = resolve_config(config, overrides, resume)
    run_dir = run_dir_for(resume, out, default_run_dir(cfg))
    summary = train(cfg, run_dir, resume=bool(resume), show_progress=show_progress)
    print_summary(f"train online-rl -> {run_dir}", summary)
    if summary["interrupted"]:
        print(f"interrupted: checkpoint saved at {summary['env_steps']} env steps; continue with "
              f"`robotstack train online-rl --resume {run_dir}`")
    return summary
