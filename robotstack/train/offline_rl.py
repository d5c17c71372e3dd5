"""Stage 2 of RL-100, one offline round's RL part (`robotstack train offline-rl`; rl100.md §4, §6, §12, §13).

Read top to bottom: config -> checks (before any work) -> data (features of every chunk start, once) ->
critics (IQL) -> transition ensemble -> AM-Q + the gate -> the PPO loop (+ joint CD) -> main.

Glossary: B batch, S chunk starts in the data, To obs history, T horizon, Ta executed actions, Da action dim,
K denoising steps, Dc frozen-encoder feature width, H AM-Q horizon, n_c chunk length (= Ta: one decision is
the executed chunk).

    IL checkpoint (policy:) + stores with rewards (data.paths)
      -> frozen encoder features c = encode_obs(obs, deterministic=True).cond of every ChunkSampler start
      -> IQL critics on (c, a_exec, R = sum_j gamma^j r, c', done), bootstrap gamma^{h'} (h' = n_c unless the
         episode ends inside the chunk)                                                 -> RUN_DIR/critics/
      -> transition ensemble on (c, a_exec) -> c'  (policies/rl/transition.py)          -> RUN_DIR/dynamics/
      -> PPO over the K denoising steps on dataset observations: chains from the behaviour policy pi_i (a frozen
         copy), A = normalize(minQ - V) of the sampled executed chunk, clip eps, lr linearly to 0;
         every gate.every updates: AM-Q(candidate) vs AM-Q(pi_i) -> ope_gate -> apply_gate (RUN_DIR/gate.jsonl)
      -> optional joint consistency distillation of a one-step student against the accepted teacher

Choices where the sources are silent or the IL checkpoint differs (rl100.md §13), each also at its code:
- Scheduler: the IL checkpoint's DDIM grid is kept (trailing, t = 99..9 for K = 10); only the RL fields are
  set: rl_eta = 1, sigma in [ppo.sigma_min, ppo.sigma_max] (0.01 / the checkpoint's resolved sigma_max, 0.1 for
  chunks). The epsilon model is trained on all N timesteps, so either grid is valid, and keeping it means the
  accepted policy is gated, evaluated and exported on the grid it was trained with. `ppo.grid: rl100` switches
  to the official code's grid (leading + steps_offset 1 + prev clamp: 91..1). num_inference_steps is set to
  ppo.ddim_steps, so the saved policy samples with the K it was fine-tuned at.
- Critics and the ensemble read actions normalised by the policy's own normaliser (the space the chain lives
  in), the executed window only (Ta x Da; the executed window of the ChunkSampler = chunk[action_start:+Ta]).
- AM-Q: the official estimator (mean of minQ over H model steps, `mean_q`), on a fixed set of gate.batch_size
  dataset starts with fixed noise, so candidate and pi_i see common random numbers and the values of successive
  gates are comparable. Model samples are clamped to the data's feature range (policies/rl/transition.py).
  Actions for AM-Q come from gate.eta (default 0 = the deterministic DDIM the policy is
  evaluated and deployed with; 1 = the stochastic chain PPO trains).
- Gate: the paper's delta rule with revert (default) or the code's strict ">" with no revert
  (gate.mode: strict_no_revert). The cached AM-Q of pi_i is the reference in both (in strict mode that is the
  best so far, since pi_i only changes on an improvement).
- Optimiser moments are kept across a revert (rl_math.apply_gate leaves them alone; not stated in the sources).
- PPO clip eps is constant (the code decays it over the first 200 steps; the target of the decay is not given).
- Joint CD: one student step per PPO update (rl100_same_noise_loss, train/distill.py) against the accepted teacher.
- Encoder frozen (the code's fix_encoder offline, rl100.md §4.2, §4.4), so the paper's "encoder regularisers
  (recon, VIB KL) divided by 10 in the RL stages" has nothing to act on here: no encoder loss is computed. (The
  IL configs, RGB ones included, train with encoder.vib / encoder.recon off anyway.)
- RGB observations: the chunk starts are encoded once, in passes bounded by image pixels
  (policies/rl/features.py), and PPO, the critics, the ensemble and joint CD all read those cached features;
  the camera frames are dropped after encoding (bench/results/rl100_rgb_short.json: one short RGB run on push).

Run dir (train il's layout, train/common.py):
    RUN_DIR/config.json, metrics.csv (+ tb/), summary.json, gate.jsonl (one line per gate decision)
    RUN_DIR/critics/            save_iql_critics (online-rl warm-starts its V from it)
    RUN_DIR/dynamics/           the transition ensemble (model.safetensors + dynamics.json)
    RUN_DIR/checkpoints/step_N  the ACCEPTED policy (a normal diffusion checkpoint) + candidate.safetensors
                                (the policy being trained) + optimizer/train_state; latest -> newest
    RUN_DIR/student/checkpoints/latest   the one-step student (distill.enabled)
Ctrl-C finishes the current update, saves and returns; --resume continues (critics and dynamics are reloaded;
a Ctrl-C during their fit refits them on resume). Batches and noise of update s come from (seed, s) generators.

Measured on push (bench/results/offline_rl_push_sweep.json; IL policy at 10% success, 80 episodes of demo +
noisy data, one critic/ensemble fit reused, 50 updates of 128 chains per setting, lr 1e-5 constant, gate every 25):
- sigma~ clipped to the chunk checkpoint's [0.01, 0.1] (the earlier default): clip_frac 0.52, approx_kl 6.0, max
  |r-1| per update ~50 (up to 146). A floor alone (sigma_min 0.05 / 0.1, sigma_max 0.1) barely helped
  (clip_frac 0.47-0.48); with all three floors the candidates' AM-Q moved -0.4..+0.9%. Per step, the clipped
  share is ~0.8 at the three noisiest steps (raw DDIM sigma ~0.9 capped at 0.1 while the mean is most sensitive
  there) and 0.97 at the last (sigma 0.01).
- [0.1, 0.8] (now the _base.yaml default): clip_frac 0.23, approx_kl 0.045, max |r-1| ~4; candidates +1.4..2.6%
  AM-Q after 25-50 updates (rl100 grid: clip_frac 0.18, +2.9..3.1%; batched update: 0.10, +1.4..1.8%; lr 1e-6:
  0.03, +1.8..2.0%). [0.01, 0.8]: clip_frac 0.28 but approx_kl 0.71 and max |r-1| ~34 (the last step), +2.2..2.5%.
- No candidate cleared the paper's delta = 5% (margin 0.030): under delta_revert pi_i stays fixed and the clip
  keeps the candidate near it, so the gain saturates at +2..3% (gate.every 100: +2.3%). The code's strict ">"
  gate (gate.mode strict_no_revert) re-centres pi_i at each accept: 6/6 accepted in 150 updates, AM-Q 0.600 ->
  0.653 (+8.8%), but success over 50 episodes (seeds 100000..) 6/50 vs the IL policy's 5/50: no measured gain.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from robotstack.core import keys as K
from robotstack.core.config import save_config
from robotstack.core.errors import ConfigError, StoreError
from robotstack.core.progress import print_summary, progress_bar
from robotstack.data.chunks import ChunkSampler
from robotstack.data.store import EpisodeStore, load_stores
from robotstack.train.common import (CONFIG_NAME, LoopConfig, RunLogger, StopRequest, numpy_rng,
                                     resolve_stage_config, restore_run_checkpoint, run_dir_for,
                                     save_run_checkpoint, set_lr, torch_gen, truncate_metrics)
from robotstack.train.rl_math import GATE_MODES, am_q, apply_gate, ope_gate

from policies.checkpoint import load_checkpoint, read_config, require_delta_actions
from policies.common.optim import gradient_step
from policies.diffusion.model import ACTION_KEY, DiffusionPolicy
from policies.rl.critics import (DoubleQ, ValueNet, iql_q_loss, iql_value_loss, save_iql_critics, load_iql_critics,
                                 soft_update, td_target)
from policies.rl.denoise_ppo import (DenoisePPOConfig, normalize_advantage, ppo_update, rl100_scheduler,
                                     sample_chain)
from policies.rl.features import block_rows, encode_blocks
from policies.rl.transition import EnsembleConfig, TransitionEnsemble, fit_ensemble

CANDIDATE_FILE = "candidate.safetensors"
# Ctrl-C during the critic / model fit: nothing to keep (resume refits them)
INTERRUPTED_EARLY = {"interrupted": True, "steps": 0, "amq_initial": None, "amq_final": None, "n_accepted": 0,
                     "n_rejected": 0}


# =========================================================================================== config
@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)  # episode stores with rewards (demos + earlier rollouts)


@dataclass
class CriticConfig:
    steps: int = 3000
    batch_size: int = 256
    lr: float = 3e-4
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # code 512x2; CPU-sized
    layer_norm: bool = False
    expectile: float = 0.7
    gamma: float = 0.99  # per env step; a chunk bootstraps with gamma^{h'}
    tau: float = 0.005  # target Q polyak, every `target_every` steps (code: 2)
    target_every: int = 2

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.target_every < 1:
            raise ConfigError("config critic: steps, batch_size and target_every must be >= 1")
        if not 0 < self.expectile < 1 or not 0 < self.gamma <= 1:
            raise ConfigError(f"config critic: need 0 < expectile < 1 and 0 < gamma <= 1, got "
                              f"{self.expectile}, {self.gamma}")


@dataclass
class PPOConfig:
    clip_eps: float = 0.25  # official offline code
    ddim_steps: int = 10  # K
    sigma_min: float = 0.01
    sigma_max: float | None = None  # None = the checkpoint's resolved value (0.8 single action, 0.1 chunks)
    grid: str = "keep"  # keep (the IL checkpoint's DDIM grid) | rl100 (91..1, the official code)
    update: str = "per_step"  # per_step (one optimiser step per denoising step, official) | batched
    max_grad_norm: float = 0.5

    def __post_init__(self) -> None:
        if self.grid not in ("keep", "rl100"):
            raise ConfigError(f"config ppo.grid: {self.grid!r} is not 'keep' or 'rl100'")
        DenoisePPOConfig(steps=self.ddim_steps, clip_eps=self.clip_eps, update=self.update)  # its checks


@dataclass
class GateConfig:
    every: int = 50  # PPO updates between AM-Q evaluations (code eval_step 50)
    horizon: int = 5  # H model steps (decisions); the code sweeps {3, 5, 10} for chunks
    delta: float = 0.05
    mode: str = "delta_revert"  # delta_revert | strict_no_revert (the official code: strict ">", no revert)
    batch_size: int = 256  # fixed AM-Q start states
    eta: float = 0.0  # DDIM eta of the AM-Q actions: 0 = the deployed deterministic sampler

    def __post_init__(self) -> None:
        if self.mode not in GATE_MODES:
            raise ConfigError(f"config gate.mode: {self.mode!r} is not one of {GATE_MODES}")
        if self.every < 1 or self.horizon < 1 or self.batch_size < 1 or self.delta < 0:
            raise ConfigError("config gate: need every, horizon, batch_size >= 1 and delta >= 0")


@dataclass
class DistillSection:
    enabled: bool = False
    lr: float = 1e-4
    batch_size: int = 64
    grad_clip: float = 1.0
    teacher_steps: int = 0  # 0 = ppo.ddim_steps


@dataclass
class TrainConfig(LoopConfig):
    """The PPO loop: `steps` PPO updates of `batch_size` chains. lr decays linearly to 0 over the updates
    (the official code's bppo lr schedule) unless lr_schedule is set to constant."""

    steps: int = 500
    batch_size: int = 256
    lr: float = 1e-5
    warmup_steps: int = 0
    log_every: int = 10
    checkpoint_every: int = 50
    num_threads: int = 1
    lr_schedule: str = "linear"  # linear (to 0 at `steps`) | constant

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr_schedule not in ("linear", "constant"):
            raise ConfigError(f"config train.lr_schedule: {self.lr_schedule!r} is not 'linear' or 'constant'")

    def lr_at(self, step: int) -> float:
        return self.lr * (1.0 - step / self.steps if self.lr_schedule == "linear" else 1.0)


@dataclass
class EvalConfig:
    episodes: int = 0  # > 0: evaluate the accepted teacher (and the student) at the end
    before: bool = False  # also evaluate the IL policy first (il_eval_success_rate), same seeds
    num_envs: int = 1
    seed: int = 100_000
    max_episode_steps: int = 0


@dataclass
class OfflineRLConfig:
    task: str = ""
    policy: str = ""  # IL checkpoint dir, e.g. runs/il/push/checkpoints/latest
    policy_weights: str = "ema"  # ema (when present) | model
    data: DataConfig = field(default_factory=DataConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    dynamics: EnsembleConfig = field(default_factory=EnsembleConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    distill: DistillSection = field(default_factory=DistillSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if not self.task:
            raise ConfigError("config task: required (e.g. task: push)")
        if not self.policy:
            raise ConfigError("config policy: the IL checkpoint dir is required (e.g. policy=RUN/checkpoints/latest)")
        if not self.data.paths:
            raise ConfigError("config data.paths: at least one episode store (with rewards) is required")
        if self.policy_weights not in ("ema", "model"):
            raise ConfigError(f"config policy_weights: {self.policy_weights!r} is not 'ema' or 'model'")


# =========================================================================================== checks
def check_inputs(cfg: OfflineRLConfig) -> None:
    """Everything that can be refused is refused here, before any file is written or any net is trained."""
    name, pcfg, extra = read_config(cfg.policy)  # a missing / malformed checkpoint fails naming its config.json
    cfg_file = Path(cfg.policy) / "config.json"
    if name != "diffusion":
        raise ConfigError(f"config policy {cfg.policy}: {cfg_file} holds a {name!r} policy; offline-rl needs the IL "
                          f"diffusion policy ('diffusion')")
    ckpt_task = extra.get("task") or (extra.get("task_spec") or {}).get("task")
    if ckpt_task and ckpt_task != cfg.task:
        raise ConfigError(f"config policy {cfg.policy}: {cfg_file} extra.task = {ckpt_task!r}, expected the "
                          f"config's task {cfg.task!r}")
    require_delta_actions(extra, f"config policy {cfg.policy}")
    want = {**{k: tuple(s) for k, s in pcfg.obs_shapes.items()}, K.ACTION: (pcfg.action_dim,)}
    for path in cfg.data.paths:
        if not Path(path).exists():
            raise ConfigError(f"config data.paths: store {path} does not exist")
        try:
            with EpisodeStore.open(path) as store:
                specs = store.key_specs()
                n_eps = store.n_episodes
        except StoreError as exc:
            raise ConfigError(f"config data.paths: {exc}") from exc
        if n_eps == 0:
            raise ConfigError(f"config data.paths: store {path} has no episodes")
        if K.REWARD not in specs:
            raise ConfigError(f"config data.paths: store {path} has no {K.REWARD!r} key (keys {sorted(specs)}); "
                              "offline RL needs rewards (record with the sim, which stores them)")
        for key, shape in want.items():
            if key not in specs:
                raise ConfigError(f"config data.paths: store {path} lacks key {key!r} that the policy "
                                  f"{cfg.policy} reads (store keys {sorted(specs)})")
            if tuple(specs[key][0]) != shape:
                raise ConfigError(f"config data.paths: store {path} key {key!r} has frame shape "
                                  f"{tuple(specs[key][0])}, expected {shape} (policy {cfg_file})")


# ========================================================================================= builders
def rl_ready(policy: DiffusionPolicy, ppo: PPOConfig) -> DiffusionPolicy:
    """Set the RL fields of the IL policy's scheduler (see the module docstring: the grid is kept by default)."""
    sc = policy.config.scheduler
    sigma_max = sc.sigma_max if ppo.sigma_max is None else ppo.sigma_max
    if ppo.grid == "rl100":
        new = rl100_scheduler(sigma_max=sigma_max, sigma_min=ppo.sigma_min,
                              num_train_timesteps=sc.num_train_timesteps, beta_schedule=sc.beta_schedule,
                              clip_sample=sc.clip_sample, num_inference_steps=ppo.ddim_steps)
        policy._schedule = None  # rebuilt on first use with the new grid
    else:
        new = dataclasses.replace(sc, rl_eta=1.0, sigma_min=ppo.sigma_min, sigma_max=sigma_max,
                                  num_inference_steps=ppo.ddim_steps)
    policy.config = policy.config.replace(scheduler=new)
    return policy


def load_policy(cfg: OfflineRLConfig) -> DiffusionPolicy:
    policy = load_checkpoint(cfg.policy, weights="auto" if cfg.policy_weights == "ema" else "model")
    policy = rl_ready(policy, cfg.ppo).eval()
    # frozen encoder and normaliser (the code's fix_encoder); PPO trains the denoiser only
    policy.requires_grad_(False)
    policy.denoiser.requires_grad_(True)
    return policy


# ============================================================================================= data
@dataclass
class ChunkData:
    """Every chunk start of the stores, encoded once by the frozen encoder (all tensors have S rows). The
    observation arrays themselves (camera frames for an RGB policy) are not kept: PPO, the critics, the model
    and joint CD all read `feat`."""

    n_episodes: int
    feat: torch.Tensor  # (S, Dc)
    next_feat: torch.Tensor  # (S, Dc) window ending at t + h'
    action: torch.Tensor  # (S, Ta*Da) executed chunk, normalised
    reward_sum: torch.Tensor  # (S,)
    h_eff: torch.Tensor  # (S,)
    done: torch.Tensor  # (S,) float
    complete: torch.Tensor  # (S,) bool


def _store_keys(path: str) -> list[str]:
    with EpisodeStore.open(path) as store:
        return store.keys()


@torch.no_grad()
def load_chunks(cfg: OfflineRLConfig, policy: DiffusionPolicy, block: int | None = None) -> ChunkData:
    """Encode every chunk start (and its successor window) once. `block` rows per encoder pass: None =
    policies/rl/features.block_rows (2048 for state, ~100 for a 96x96 camera: the RGB activations of 2048 rows
    took ~4 GB)."""
    c = policy.config
    block = block_rows(c) if block is None else block
    obs_keys = list(c.obs_shapes)
    optional = [k for k in (K.TERMINATED, K.TRUNCATED) if all(k in _store_keys(p) for p in cfg.data.paths)]
    arrays, ends, _ = load_stores(cfg.data.paths, [*obs_keys, K.ACTION, K.REWARD, *optional])
    # one decision = the executed chunk: n_c = Ta actions from "now" (chunk[action_start] is the action at t)
    sampler = ChunkSampler(arrays, ends, c.n_action_steps, cfg.critic.gamma, obs_keys, n_obs_steps=c.n_obs_steps,
                           terminated_key=K.TERMINATED if K.TERMINATED in optional else None,
                           truncated_key=K.TRUNCATED if K.TRUNCATED in optional else None, intervention_key=None)
    if len(sampler) == 0:
        raise ConfigError(f"config data.paths: no chunk start in {cfg.data.paths}")
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("feat", "next", "act", "r", "h", "d", "c")}
    for s in range(0, len(sampler.starts), block):
        b = sampler.batch(sampler.starts[s:s + block])
        parts["feat"].append(encode_blocks(policy, b.obs, block))
        parts["next"].append(encode_blocks(policy, b.next_obs, block))
        act = policy.normalizer.normalize(ACTION_KEY, torch.from_numpy(b.actions).to(torch.float32))
        parts["act"].append(act.flatten(1))
        parts["r"].append(torch.from_numpy(b.reward_sum).float())
        parts["h"].append(torch.from_numpy(b.h_eff))
        parts["d"].append(torch.from_numpy(b.done).float())
        parts["c"].append(torch.from_numpy(b.complete))
    cat = {k: torch.cat(v) for k, v in parts.items()}
    return ChunkData(int(len(sampler.episode_ends)), cat["feat"], cat["next"], cat["act"], cat["r"], cat["h"],
                     cat["d"], cat["c"])


# ========================================================================================== critics
def iql_step(q: DoubleQ, q_target: DoubleQ, v: ValueNet, opt_q, opt_v, data: ChunkData, idx: torch.Tensor,
             cfg: CriticConfig) -> dict[str, float]:
    """One IQL update (V by expectile regression on min target Q, then both Q heads on R + gamma^{h'} V(s'))."""
    f, a = data.feat[idx], data.action[idx]
    with torch.no_grad():
        qt = q_target.min_q(f, a)
    loss_v = iql_value_loss(v(f), qt, cfg.expectile)
    gradient_step(opt_v, loss_v)
    with torch.no_grad():
        target = td_target(data.reward_sum[idx], v(data.next_feat[idx]), data.done[idx], cfg.gamma, data.h_eff[idx])
    loss_q = iql_q_loss(*q(f, a), target)
    gradient_step(opt_q, loss_q)
    return {"critic/loss_v": float(loss_v.detach()), "critic/loss_q": float(loss_q.detach())}


def train_critics(cfg: OfflineRLConfig, data: ChunkData, bar, stop) -> tuple[DoubleQ, ValueNet, dict] | None:
    """-> (Q, V, last losses), or None when Ctrl-C came during the fit."""
    c = cfg.critic
    torch.manual_seed(cfg.train.seed)
    q = DoubleQ(data.feat.shape[1], data.action.shape[1], c.hidden, c.layer_norm)
    v = ValueNet(data.feat.shape[1], c.hidden, c.layer_norm)
    q_target = copy.deepcopy(q).requires_grad_(False)
    opt_q, opt_v = torch.optim.Adam(q.parameters(), lr=c.lr), torch.optim.Adam(v.parameters(), lr=c.lr)
    task = bar.add_task("critics (IQL)", total=c.steps, status="")
    n = data.feat.shape[0]
    stats: dict = {}
    for step in range(c.steps):
        idx = torch.from_numpy(numpy_rng(cfg.train.seed, step, stream=10).integers(0, n, c.batch_size))
        stats = iql_step(q, q_target, v, opt_q, opt_v, data, idx, c)
        if (step + 1) % c.target_every == 0:
            soft_update(q_target, q, c.tau)
        if (step + 1) % 100 == 0 or step + 1 == c.steps:
            bar.update(task, completed=step + 1, status=f"Q {stats['critic/loss_q']:.4f}")
        if stop.requested:
            return None
    return q.eval().requires_grad_(False), v.eval().requires_grad_(False), stats


def critics_meta(cfg: OfflineRLConfig, data: ChunkData, policy: DiffusionPolicy) -> dict:
    c = cfg.critic
    return {"feat_dim": int(data.feat.shape[1]), "action_size": int(data.action.shape[1]), "hidden": c.hidden,
            "layer_norm": c.layer_norm, "gamma": c.gamma, "n_c": policy.config.n_action_steps,
            "expectile": c.expectile, "actions": "executed chunk, normalised by the policy's normaliser",
            "features": f"frozen encoder of {cfg.policy} (encode_obs(obs, deterministic=True).cond)"}


def train_dynamics(cfg: OfflineRLConfig, data: ChunkData, bar) -> tuple[TransitionEnsemble, dict]:
    keep = data.complete  # a chunk cut short by the episode end does not cover n_c steps
    task = bar.add_task("dynamics (ensemble)", total=cfg.dynamics.max_epochs, status="")
    model, report = fit_ensemble(data.feat[keep], data.action[keep], data.next_feat[keep], cfg.dynamics,
                                 torch_gen(cfg.train.seed, 0, stream=11),
                                 progress=lambda e, h: bar.update(task, completed=e, status=f"holdout {h:.4f}"))
    bar.update(task, completed=cfg.dynamics.max_epochs)
    return model, {"dynamics/holdout_mse_elites": float(np.mean([report.holdout_mse[i] for i in report.elites])),
                   "dynamics/epochs": report.epochs, "dynamics/train_nll": report.train_nll}


# ============================================================================================= AM-Q
def policy_action(policy: DiffusionPolicy, cond: torch.Tensor, steps: int, eta: float,
                  gen: torch.Generator) -> torch.Tensor:
    """Features (B, Dc) -> the executed chunk (B, Ta*Da), normalised: the policy's own DDIM sampler from cond."""
    x, *_ = policy._sample(cond, "ddim", steps, gen, eta, clip=eta > 0, keep_chain=False)
    return x[:, policy.executed_slice].flatten(1)


@torch.no_grad()
def amq_of(policy: DiffusionPolicy, starts: torch.Tensor, q, model, horizon: int, steps: int, eta: float,
           seed: int) -> float:
    """AM-Q (rl_math.am_q, `mean_q`): mean of minQ along H-step ensemble rollouts from the fixed feature rows
    `starts` (B, Dc). The same seed -> the same noise for every policy evaluated (common random numbers)."""
    gen = torch.Generator().manual_seed(seed)
    return am_q(starts, lambda s: policy_action(policy, s, steps, eta, gen),
                lambda s, a: model.sample(s, a, gen), lambda s, a: q.min_q(s, a).numpy(), horizon,
                estimator="mean_q").value


@dataclass
class GateState:
    amq_behaviour: float  # AM-Q of the accepted policy pi_i (strict mode: the best so far)
    amq_initial: float
    n_accepted: int = 0
    n_rejected: int = 0


def gate_step(update: int, candidate: DiffusionPolicy, behaviour: DiffusionPolicy, state: GateState, amq_fn,
              cfg: GateConfig, log_path: Path | None = None) -> dict:
    """AM-Q of the candidate vs the cached AM-Q of pi_i -> ope_gate -> apply_gate (accept: pi_i <- candidate;
    delta_revert reject: candidate <- pi_i). One JSON line per decision in log_path. -> the decision dict."""
    amq_new = float(amq_fn(candidate))
    decision = ope_gate(amq_new, state.amq_behaviour, cfg.delta, cfg.mode)
    apply_gate(decision, candidate, behaviour)
    if decision.accepted:
        state.amq_behaviour = amq_new
        state.n_accepted += 1
    else:
        state.n_rejected += 1
    row = {"update": update, **decision.as_dict()}
    if log_path is not None:
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


# ============================================================================================= loop
def _extra(cfg: OfflineRLConfig, il_extra: dict, step: int, state: GateState) -> dict:
    return {**il_extra, "stage": "offline_rl", "step": step, "task": cfg.task, "data_paths": cfg.data.paths,
            "il_checkpoint": str(cfg.policy), "amq": state.amq_behaviour, "n_accepted": state.n_accepted}


def _truncate_gate_log(path: Path, step: int) -> None:
    if path.exists():
        rows = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["update"] <= step]
        path.write_text("".join(r + "\n" for r in rows))


def run(cfg: OfflineRLConfig, run_dir: str | Path, resume: bool = False, show_progress: bool = True,
        stop_at: int | None = None) -> dict:
    """One offline round's RL part to cfg.train.steps PPO updates (see the module docstring). `stop_at` ends
    right after the step-`stop_at` checkpoint (as a kill after it would). -> summary dict."""
    t = cfg.train
    check_inputs(cfg)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / CONFIG_NAME)
    t0 = time.perf_counter()
    il_extra = read_config(cfg.policy)[2]
    policy = load_policy(cfg)  # the candidate pi (trained)
    data = load_chunks(cfg, policy)
    logger = RunLogger(run_dir)
    gate_log = run_dir / "gate.jsonl"
    bar = progress_bar(None, show_progress)
    interrupted, start, end = False, 0, t.steps if stop_at is None else min(t.steps, stop_at)
    summary: dict = {"run_dir": str(run_dir), "task": cfg.task, "policy": str(cfg.policy),
                     "n_chunks": int(data.feat.shape[0]), "n_episodes": data.n_episodes}
    try:
        with bar, StopRequest() as stop:
            # ---- critics and the transition model: fitted once per run, reloaded on resume
            if (run_dir / "critics" / "critics.json").is_file() and resume:
                q, v, _ = load_iql_critics(run_dir / "critics")
            else:
                fitted = train_critics(cfg, data, bar, stop)
                if fitted is None:
                    return _finish(cfg, run_dir, summary | INTERRUPTED_EARLY, t0, logger)
                q, v, stats = fitted
                save_iql_critics(run_dir / "critics", q, v, critics_meta(cfg, data, policy))
                logger.log(0, stats)
            q.eval().requires_grad_(False), v.eval().requires_grad_(False)
            if (run_dir / "dynamics" / "dynamics.json").is_file() and resume:
                model = TransitionEnsemble.load(run_dir / "dynamics")
            else:
                model, stats = train_dynamics(cfg, data, bar)
                model.save(run_dir / "dynamics")
                logger.log(0, stats)
            if stop.requested:
                return _finish(cfg, run_dir, summary | INTERRUPTED_EARLY, t0, logger)

            # ---- PPO over the denoising steps, with the gate
            behaviour = copy.deepcopy(policy).requires_grad_(False)  # pi_i
            opt = torch.optim.Adam(policy.denoiser.parameters(), lr=t.lr)
            ppo = DenoisePPOConfig(steps=cfg.ppo.ddim_steps, eta=1.0, clip_eps=cfg.ppo.clip_eps,
                                   update=cfg.ppo.update, max_grad_norm=cfg.ppo.max_grad_norm)
            g = cfg.gate
            gate_idx = torch.from_numpy(numpy_rng(t.seed, 0, stream=20).integers(0, data.feat.shape[0], g.batch_size))
            gate_starts = data.feat[gate_idx]
            amq_seed = int(numpy_rng(t.seed, 0, stream=21).integers(0, 2 ** 31 - 1))

            def amq_fn(pol: DiffusionPolicy) -> float:
                return amq_of(pol, gate_starts, q, model, g.horizon, cfg.ppo.ddim_steps, g.eta, amq_seed)

            student = student_opt = None
            if cfg.distill.enabled:
                student, student_opt = build_joint_student(cfg, behaviour)
            latest = run_dir / "checkpoints" / "latest"
            if resume and (latest / "train_state.json").is_file():
                meta = restore_run_checkpoint(run_dir, behaviour, opt)
                policy.load_state_dict(load_file(str(latest / CANDIDATE_FILE)), strict=True)
                start = int(meta["step"])
                state = GateState(**meta["gate"])
                if student is not None:
                    restore_run_checkpoint(run_dir / "student", student, student_opt)
                if (run_dir / "summary.json").is_file():  # the IL evaluation ran before the interruption
                    prev = json.loads((run_dir / "summary.json").read_text())
                    summary |= {k: val for k, val in prev.items() if k.startswith("il_eval_")}
                truncate_metrics(run_dir, start)
                _truncate_gate_log(gate_log, start)
            else:
                if cfg.eval.episodes and cfg.eval.before:
                    summary |= {f"il_{k}": val for k, val in final_eval(cfg, run_dir, behaviour, None,
                                                                        "il").items()}
                amq0 = amq_fn(behaviour)
                state = GateState(amq0, amq0)
                gate_log.unlink(missing_ok=True)
                logger.log(0, {"amq": amq0})

            task = bar.add_task("ppo (offline)", total=t.steps, completed=start, status="")
            n = data.feat.shape[0]
            sums: dict[str, float] = {}
            n_sum = 0
            for step in range(start, end):
                lr = t.lr_at(step)
                set_lr(opt, lr)
                rows = torch.from_numpy(numpy_rng(t.seed, step).integers(0, n, t.batch_size))
                # the cached frozen-encoder features of those starts (= encode_obs of their windows): an RGB
                # policy does not re-run its CNN on every batch
                chain = sample_chain(behaviour, None, steps=cfg.ppo.ddim_steps, eta=1.0,
                                     generator=torch_gen(t.seed, step, stream=1), cond=data.feat[rows])
                with torch.no_grad():
                    a_exec = chain.chain[:, -1][:, policy.executed_slice].flatten(1)
                    adv = normalize_advantage(q.min_q(chain.cond, a_exec) - v(chain.cond))
                metrics = ppo_update(policy, opt, chain, adv, ppo)
                if student is not None:
                    metrics |= joint_cd_step(cfg, student, student_opt, behaviour, data, step)
                sums = {k: sums.get(k, 0.0) + val for k, val in metrics.items()}
                n_sum += 1
                done = step + 1
                row: dict[str, float] = {}
                if done % g.every == 0 or done == t.steps:
                    d = gate_step(done, policy, behaviour, state, amq_fn, g, gate_log)
                    row |= {"amq_candidate": d["amq_new"], "amq": state.amq_behaviour, "accepted": float(d["accepted"])}
                    bar.update(task, status=f"AM-Q {state.amq_behaviour:.3f}  acc {state.n_accepted} "
                                            f"rej {state.n_rejected}")
                if t.log_due(done) or row:
                    row |= {k: val / max(n_sum, 1) for k, val in sums.items()} | {"lr": lr} if n_sum else {}
                    logger.log(done, row)
                    sums, n_sum = {}, 0
                bar.update(task, completed=done)
                interrupted = stop.requested
                if t.checkpoint_due(done, end, interrupted):
                    save_state(cfg, run_dir, done, policy, behaviour, opt, student, student_opt, state, il_extra)
                if interrupted:
                    end = done
                    break
    finally:
        logger.close()
    summary |= {"steps": end, "steps_this_run": max(0, end - start), "interrupted": interrupted,
                "amq_initial": state.amq_initial, "amq_final": state.amq_behaviour,
                "n_accepted": state.n_accepted, "n_rejected": state.n_rejected}
    if cfg.eval.episodes and not interrupted:
        summary |= final_eval(cfg, run_dir, behaviour, student)
    return _finish(cfg, run_dir, summary, t0, None)


def save_state(cfg: OfflineRLConfig, run_dir: Path, step: int, policy: DiffusionPolicy, behaviour: DiffusionPolicy,
               opt, student, student_opt, state: GateState, il_extra: dict) -> None:
    """checkpoints/step_N = the accepted policy (what eval/export open) + the candidate's weights beside it."""
    final = save_run_checkpoint(run_dir, step, behaviour, opt, extra=_extra(cfg, il_extra, step, state),
                                state={"seed": cfg.train.seed, "gate": dataclasses.asdict(state)},
                                keep=cfg.train.keep_checkpoints)
    save_file({k: v.detach().contiguous().clone() for k, v in policy.state_dict().items()},
              str(final / CANDIDATE_FILE))
    if student is not None:
        save_run_checkpoint(run_dir / "student", step, student, student_opt,
                            extra={**_extra(cfg, il_extra, step, state), "stage": "offline_rl_student",
                                   "teacher": str(run_dir / "checkpoints" / f"step_{step}"), "method": "rl100"},
                            keep=cfg.train.keep_checkpoints)


def _finish(cfg: OfflineRLConfig, run_dir: Path, summary: dict, t0: float, logger) -> dict:
    if logger is not None:
        logger.close()
    summary["wall_s"] = time.perf_counter() - t0
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


# ========================================================================================= joint CD
def build_joint_student(cfg: OfflineRLConfig, teacher: DiffusionPolicy):
    """A one-step consistency student warm-started from the teacher (train/distill.py build_student)."""
    from policies.consistency.config import ConsistencyConfig
    from robotstack.train.distill import DistillConfig, TrainConfig as DistillTrain, build_student

    dcfg = DistillConfig(teacher=cfg.policy, policy=ConsistencyConfig(method="rl100"),
                         train=DistillTrain(seed=cfg.train.seed))
    student = build_student(dcfg, teacher)
    opt = torch.optim.Adam(student.denoiser.parameters(), lr=cfg.distill.lr)
    return student, opt


def joint_cd_step(cfg: OfflineRLConfig, student, opt, teacher: DiffusionPolicy, data: ChunkData,
                  step: int) -> dict[str, float]:
    """L_CD (rl100_same_noise_loss) against the accepted teacher on dataset features; its own optimiser."""
    from robotstack.train.distill import rl100_same_noise_loss

    d = cfg.distill
    idx = torch.from_numpy(numpy_rng(cfg.train.seed, step, stream=30).integers(0, data.feat.shape[0], d.batch_size))
    student.denoiser.train()
    loss, _ = rl100_same_noise_loss(student, teacher, data.feat[idx], d.teacher_steps or cfg.ppo.ddim_steps,
                                    torch_gen(cfg.train.seed, step, stream=31))
    gradient_step(opt, loss, student.denoiser.parameters(), d.grad_clip)
    student.eval()
    return {"loss_cd": float(loss.detach())}


# ============================================================================================= eval
def final_eval(cfg: OfflineRLConfig, run_dir: Path, teacher: DiffusionPolicy, student, tag: str = "teacher"
               ) -> dict:
    from robotstack.eval.rollout import evaluate  # lazy: imports the sim (MuJoCo)

    e = cfg.eval
    out = {}
    for name, pol in (("", teacher), ("student_", student)):
        if pol is None:
            continue
        out_dir = run_dir / "eval" / (name[:-1] if name else tag)
        r = evaluate(pol, cfg.task, episodes=e.episodes, seed=e.seed, num_envs=e.num_envs,
                     max_episode_steps=e.max_episode_steps or None, out_dir=out_dir, show_progress=False).summary()
        out |= {f"{name}eval_success_rate": r["success_rate"], f"{name}eval_ci95_low": r["ci95_low"],
                f"{name}eval_ci95_high": r["ci95_high"]}
    return out


# ============================================================================================= main
def resolve_config(config: str | None, overrides: list[str], resume: str | None) -> OfflineRLConfig:
    return resolve_stage_config(OfflineRLConfig, "train offline-rl", config, overrides, resume)


def default_run_dir(cfg: OfflineRLConfig) -> Path:
    return Path("runs") / "offline_rl" / f"{cfg.task.replace(':', '_')}_{time.strftime('%Y%m%d_%H%M%S')}"


def main(config: str | None, overrides: list[str], resume: str | None = None, out: str | None = None,
         show_progress: bool = True) -> dict:
    cfg = resolve_config(config, overrides, resume)
    run_dir = run_dir_for(resume, out, default_run_dir(cfg))
    summary = run(cfg, run_dir, resume=bool(resume), show_progress=show_progress)
    print_summary(f"train offline-rl -> {run_dir}", summary)
    if summary["interrupted"]:
        print(f"interrupted: checkpoint saved at update {summary['steps']}; continue with "
              f"`robotstack train offline-rl --resume {run_dir}`")
    return summary
