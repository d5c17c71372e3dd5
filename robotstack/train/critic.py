"""Stage: chunked critics on episode stores (`robotstack train critic`), issue 12; spec shared/specs/dqc_aloe.md.

Read top to bottom: config -> data -> builders -> one critic step (DQC | ALOE) -> AWR fine-tune -> loop -> main.

Glossary: B batch, M current-policy samples per state, N best-of-N candidates, To obs history, T policy horizon,
Ta executed actions, h critic chunk, h_a partial / scored chunk, Da action dim, K ensemble members.

Methods (policies/critics/chunked.py holds the math; this file only feeds it):
- method dqc: DQCCritics with critic.variant dqc | qc | ns | os (the baselines are flags of the same agent, spec
  §2.6). The scorer is the online partial critic over h_a actions (best-of-N scores only the executed part).
- method aloe: AloeCritic, a chunked-TD ensemble over the h executed actions whose target bootstraps with M
  chunks sampled from the *current* policy (`policy:`) at s_{t+h'}, pessimistic min over members (spec §3.2).
  Needs critic.variant qc (one chunk critic, h_a = h) and critic.output linear. The policy is fixed while its
  critic trains, so those chunks are drawn once per chunk start before training (TargetChunkCache,
  aloe.cache_targets; AloeConfig says why).
- awr.steps > 0 (aloe only): after the critic, the policy is fine-tuned by advantage-weighted denoising,
  w = advantage_weights(A), A = min_i Q_i(s, a_exec) - mean_m min_i Q_i(s, a_m), a_m ~ the *original* policy
  (the one the critic evaluated), on the same stores. Written as a policy run dir under RUN_DIR/awr.

What the critics read: the raw observation window (To frames of the policy's obs keys) normalised by the scorer's
own min-max stats and flattened (policies/critics/scorer.py says why; recorded as scorer.json "features").
Data: chunks come from the one ChunkSampler with complete_only=True (a chunk cut by a time limit before h actions
is not a training sample: its padded tail was never executed). Human interventions: data.intervention keep |
drop | weight (intervention_weights; a chunk counts as intervened when any executed step was).

Run dir (the layout of train il; robotstack/train/common.py):
    RUN_DIR/config.json                     resolved CriticStageConfig (what --resume restarts from)
    RUN_DIR/metrics.csv, RUN_DIR/tb/        losses, q_mean, lr, steps/s (+ awr/* rows)
    RUN_DIR/checkpoints/step_N/             scorer.json + scorer.safetensors (load_scorer opens it), critics.
                                            safetensors (every critic module, for resume), optimizer, train_state
    RUN_DIR/checkpoints/latest -> step_N    the scorer: `load_scorer`, the ONNX exporter, `critic evaluate`
    RUN_DIR/awr/checkpoints/latest          the AWR fine-tuned diffusion policy (awr.steps > 0)
    RUN_DIR/summary.json                    interrupted, wall_s, final losses, eval_* (best-of-N / AWR policy)
Determinism and resume: batch indices and policy noise for step s come from generators seeded with (seed, s).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from robotstack.core import keys as K
from robotstack.core.config import save_config
from robotstack.core.errors import ConfigError, RobotstackError, StoreError
from robotstack.core.progress import print_summary, progress_bar
from robotstack.data.chunks import ChunkSampler
from robotstack.data.store import load_stores
from robotstack.train.common import (CONFIG_NAME, LoopConfig, MetricWindow, RunLogger, StopRequest,
                                     load_training_state, numpy_rng, read_metrics, resolve_stage_config,
                                     restore_run_checkpoint, run_dir_for, save_run_checkpoint, set_lr, torch_gen,
                                     truncate_metrics)

from policies.checkpoint import EMA_FILE
from policies.common.ema import EMA
from policies.common.optim import gradient_step
from policies.critics.chunked import (WEIGHT_MODES, AloeCritic, ChunkCriticConfig, DQCCritics, advantage_weights,
                                      aloe_advantage, intervention_weights)
from policies.critics.scorer import CriticScorer, ScorerConfig, save_scorer
from policies.diffusion.model import DiffusionPolicy

CRITICS_FILE = "critics.safetensors"


# =========================================================================================== config
@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)  # episode stores with rewards (mixed sources are fine)
    obs_keys: list[str] = field(default_factory=list)  # [] = the policy's obs keys
    intervention: Literal["keep", "drop", "weight"] = "keep"  # human-intervened chunks
    intervention_weight: float = 1.0  # their sample weight with intervention: weight


@dataclass
class AloeConfig:
    num_samples: int = 4  # M current-policy chunks per next state (target) / per state (AWR baseline)
    policy_steps: int = 0  # DDIM steps of those samples; 0 = the policy's own
    # The evaluated policy is fixed while its critic trains, so its M chunks at each chunk's next state are drawn
    # once, before training, for every start of the data (one batched pass) instead of per batch: a step becomes
    # an MLP step (M=4, B=256 on 2 cores: ~1 -> ~30 steps/s), which lets the TD critic train long enough to carry
    # a sparse terminal reward back to the start states. The target's expectation over a' ~ pi then uses the same
    # M draws per state throughout (a fixed Monte Carlo sample); memory N_chunks * M * h * Da floats.
    # false = fresh draws every step (the spec's literal loop).
    cache_targets: bool = True
    # Aggregate over ensemble members in the target and in the value the scorer reports: "min" is ALOE's
    # pessimism (spec §3.2); "mean" turns it off (measured on the weak stack policy: README "Chunked critics").
    # The AWR advantage keeps the min.
    agg: Literal["min", "mean"] = "min"


@dataclass
class AwrConfig:
    steps: int = 0  # 0 = no AWR fine-tune
    batch_size: int = 64
    lr: float = 1.0e-4
    beta: float = 1.0
    mode: str = "norm_exp_clip"  # chunked.WEIGHT_MODES
    w_max: float = 20.0
    # The proposal is an IL policy's EMA weights (decay up to 0.9999); fine-tuning its live copy at lr 1e-4 and
    # evaluating those raw weights loses that averaging (measured on stack: see README "Chunked critics"). So the
    # fine-tune keeps its own EMA with this constant decay, started at the proposal, and that EMA is the AWR
    # policy (saved as the checkpoint's EMA weights, which `load_checkpoint(weights="auto")` reads). 0 = no EMA.
    ema_decay: float = 0.999
    checkpoint_every: int = 0  # 0 = only at the end

    def __post_init__(self) -> None:
        if (self.mode not in WEIGHT_MODES or self.beta <= 0 or self.w_max <= 0 or self.steps < 0
                or not 0 <= self.ema_decay < 1):
            raise ConfigError(f"config awr: mode={self.mode!r} (expected one of {WEIGHT_MODES}), beta={self.beta}, "
                              f"w_max={self.w_max}, steps={self.steps}, ema_decay={self.ema_decay}: expected "
                              f"beta > 0, w_max > 0, steps >= 0, 0 <= ema_decay < 1")


@dataclass
class TrainConfig(LoopConfig):
    steps: int = 2000
    batch_size: int = 256
    lr: float = 3.0e-4
    warmup_steps: int = 0
    lr_schedule: Literal["cosine", "constant"] = "constant"
    log_every: int = 100
    checkpoint_every: int = 1000
    num_threads: int = 1


@dataclass
class EvalConfig:
    episodes: int = 0  # > 0: best-of-N (and the AWR policy) in sim after training
    num_candidates: int = 32  # N
    seed: int = 100_000
    max_episode_steps: int = 0


@dataclass
class CriticStageConfig:
    task: str = ""  # "" = the policy's task; else must equal it
    method: Literal["dqc", "aloe"] = "dqc"
    policy: str = ""  # diffusion policy checkpoint dir: the best-of-N proposal / ALOE's current policy
    policy_weights: Literal["auto", "ema", "model"] = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    critic: ChunkCriticConfig = field(default_factory=ChunkCriticConfig)
    aloe: AloeConfig = field(default_factory=AloeConfig)
    awr: AwrConfig = field(default_factory=AwrConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if not self.policy:
            raise ConfigError("config policy: a diffusion policy checkpoint dir is required (e.g. "
                              "runs/il/stack/checkpoints/latest)")
        if not self.data.paths:
            raise ConfigError("config data.paths: at least one episode store (with rewards) is required")
        c = self.critic
        if self.method == "aloe" and (c.variant != "qc" or c.output != "linear"):
            raise ConfigError(f"config critic: method aloe needs critic.variant qc (one chunk critic, h_a = h) and "
                              f"critic.output linear; got variant={c.variant!r}, output={c.output!r}")
        if self.awr.steps and self.method != "aloe":
            raise ConfigError(f"config awr.steps={self.awr.steps}: AWR fine-tuning needs method aloe")
        if self.aloe.num_samples < 1 or self.eval.num_candidates < 1 or self.eval.episodes < 0:
            raise ConfigError("config aloe.num_samples / eval.num_candidates: expected >= 1; eval.episodes >= 0")

    @property
    def scored_len(self) -> int:
        """Actions the scorer reads: h_a (DQC's partial critic) or h (ALOE's chunk critic, h_a == h)."""
        return self.critic.h_a


# ============================================================================================= data
def open_policy(cfg: CriticStageConfig) -> tuple[DiffusionPolicy, dict]:
    from policies.checkpoint import load_checkpoint, read_extra, require_delta_actions

    path = Path(cfg.policy)
    if not (path / "config.json").is_file():
        raise ConfigError(f"config policy: {path} is not a checkpoint dir (no config.json)")
    policy = load_checkpoint(path, weights=cfg.policy_weights)
    if not isinstance(policy, DiffusionPolicy):
        raise ConfigError(f"config policy {path}: needs a diffusion policy, got {type(policy).__name__}")
    extra = read_extra(path)
    require_delta_actions(extra, f"config policy {path}")
    return policy.eval().requires_grad_(False), extra


def check_against_policy(cfg: CriticStageConfig, policy: DiffusionPolicy, extra: dict) -> tuple[str, list[str]]:
    """-> (task, obs keys); fails naming the key when the config does not fit the policy."""
    task = cfg.task or extra.get("task", "")
    if not task:
        raise ConfigError(f"config task: empty and {cfg.policy}/config.json has no extra.task")
    if extra.get("task") and task != extra["task"]:
        raise ConfigError(f"config task={task!r}: the policy {cfg.policy} was trained on {extra['task']!r}")
    keys = cfg.data.obs_keys or list(policy.config.obs_shapes)
    unknown = [k for k in keys if k not in policy.config.obs_shapes]
    if unknown:
        raise ConfigError(f"config data.obs_keys: {unknown} are not observations of the policy "
                          f"{list(policy.config.obs_shapes)}")
    pc = policy.config
    room = pc.horizon - pc.action_start
    if cfg.scored_len > pc.n_action_steps:
        raise ConfigError(f"config critic.h_a={cfg.scored_len}: the scorer scores executed actions, the policy "
                          f"executes Ta={pc.n_action_steps}; expected h_a <= {pc.n_action_steps}")
    if cfg.awr.steps and cfg.critic.h > room:
        raise ConfigError(f"config critic.h={cfg.critic.h}: AWR reads the executed part of the policy chunk, "
                          f"expected h <= {room}")
    return task, keys


def load_chunks(cfg: CriticStageConfig, obs_keys: list[str], n_obs_steps: int) -> tuple[ChunkSampler, dict]:
    """-> (ChunkSampler over all stores, frames {key: (N, ...)} for the scorer's normaliser)."""
    for path in cfg.data.paths:
        if not Path(path).exists():
            raise ConfigError(f"config data.paths: store {path} does not exist")
    keys = [*obs_keys, K.ACTION, K.REWARD]
    flags = [K.TERMINATED, K.TRUNCATED, K.INTERVENTION]
    try:
        arrays, episode_ends, _ = load_stores(cfg.data.paths, keys)
    except StoreError as exc:
        raise ConfigError(f"config data.paths: {exc} (a critic needs {K.REWARD!r}: record with rewards)") from exc
    for flag in flags:  # optional per store (demos recorded without them read as False)
        try:
            arrays[flag] = load_stores(cfg.data.paths, [flag])[0][flag]
        except StoreError:
            pass
    c = cfg.critic
    sampler = ChunkSampler(arrays, episode_ends, c.h, c.gamma, obs_keys, n_obs_steps=n_obs_steps,
                           complete_only=True)
    if len(sampler) == 0:
        raise ConfigError(f"config data.paths: no complete chunk of h={c.h} in {cfg.data.paths}")
    return sampler, arrays


# ========================================================================================= builders
def build_scorer(cfg: CriticStageConfig, policy: DiffusionPolicy, obs_keys: list[str], arrays: dict
                 ) -> CriticScorer:
    c = cfg.critic
    torch.manual_seed(cfg.train.seed)
    sc = ScorerConfig(obs_shapes={k: tuple(policy.config.obs_shapes[k]) for k in obs_keys},
                      n_obs_steps=policy.config.n_obs_steps, action_dim=policy.config.action_dim,
                      chunk_len=cfg.scored_len, num_qs=c.num_qs, hidden=tuple(c.hidden), layer_norm=c.layer_norm,
                      output=c.output, agg=cfg.aloe.agg if cfg.method == "aloe" else "min")
    scorer = CriticScorer(sc)
    scorer.fit_normalizer(arrays)
    scorer.normalizer.requires_grad_(False)
    return scorer


def build_critics(cfg: CriticStageConfig, scorer: CriticScorer) -> nn.Module:
    """The trained modules; the scorer's critic IS the partial critic (dqc) / the chunk critic (aloe), shared."""
    c = cfg.critic
    obs_dim, da = scorer.config.obs_dim, scorer.config.action_dim
    if cfg.method == "aloe":
        return AloeCritic(scorer.critic, gamma=c.gamma, tau=c.tau, agg=cfg.aloe.agg)
    built = DQCCritics.build(c, obs_dim, da)
    return DQCCritics(c, scorer.critic, built.value, built.chunk_critic)


# ========================================================================================== one step
def to_torch(batch, scorer: CriticScorer) -> dict[str, torch.Tensor]:
    """A ChunkBatch -> critic inputs: flat normalised obs windows, normalised actions, targets' pieces."""
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.obs.items()}
    nt = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.next_obs.items()}
    return {"index": torch.from_numpy(batch.index), "obs": scorer.encode_obs(t), "next_obs": scorer.encode_obs(nt),
            "raw_next_obs": nt,
            "actions": scorer.normalize_actions(torch.from_numpy(batch.actions)),
            "reward_sum": torch.from_numpy(batch.reward_sum).float(), "h_eff": torch.from_numpy(batch.h_eff),
            "done": torch.from_numpy(batch.done).float(),
            "intervention": torch.from_numpy(batch.any_intervention)}


@torch.no_grad()
def policy_chunks(policy: DiffusionPolicy, obs: dict[str, torch.Tensor], m: int, steps: int,
                  gen: torch.Generator) -> torch.Tensor:
    """M executed chunks of the policy at each obs window, one batched call: -> (M, B, Ta, Da) env units."""
    b = next(iter(obs.values())).shape[0]
    rep = {k: v.repeat(m, *([1] * (v.dim() - 1))) for k, v in obs.items()}  # m-major: row m*B + i
    act = policy.predict_action(rep, sampler="ddim", steps=steps or None, generator=gen).action
    return act.reshape(m, b, *act.shape[1:])


class TargetChunkCache:
    """The current policy's M chunks at the next state of every chunk start, drawn once (aloe.cache_targets).

    chunks (N_starts, M, Ta, Da) normalised for the scorer, row i for sampler.starts[i]. Drawn in blocks, each
    block with its own seeded generator, so a resumed run rebuilds the same cache."""

    def __init__(self, sampler: ChunkSampler, policy: DiffusionPolicy, scorer: CriticScorer, m: int, steps: int,
                 seed: int, block: int = 512, show_progress: bool = False):
        self.starts = sampler.starts
        keys = list(scorer.config.obs_shapes)
        parts = []
        bar = progress_bar("aloe target cache", show_progress)
        task = bar.add_task("cache", total=len(self.starts), status=f"M={m}")
        with bar:
            for i, lo in enumerate(range(0, len(self.starts), block)):
                nb = sampler.batch(self.starts[lo:lo + block])
                nt = {k: torch.from_numpy(np.ascontiguousarray(nb.next_obs[k])) for k in keys}
                ch = policy_chunks(policy, nt, m, steps, torch_gen(seed, i, stream=9))  # (M, b, Ta, Da)
                parts.append(scorer.normalize_actions(ch).transpose(0, 1))
                bar.update(task, completed=min(lo + block, len(self.starts)))
        self.chunks = torch.cat(parts)

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """start frames (B,) -> (M, B, Ta, Da) normalised chunks."""
        frames = index.numpy()
        rows = np.minimum(np.searchsorted(self.starts, frames), len(self.starts) - 1)
        if not np.array_equal(self.starts[rows], frames):
            raise KeyError("TargetChunkCache: a batch start is not one of the sampler's starts")
        return self.chunks[torch.from_numpy(rows)].transpose(0, 1)


def critic_step(cfg: CriticStageConfig, critics: nn.Module, scorer: CriticScorer, policy: DiffusionPolicy,
                batch: dict[str, torch.Tensor], gen: torch.Generator, cache: TargetChunkCache | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
    d = cfg.data
    weight = intervention_weights(batch["intervention"], d.intervention, d.intervention_weight)
    if cfg.method == "aloe":
        if cache is not None:
            nxt = cache.lookup(batch["index"])
        else:
            nxt = scorer.normalize_actions(policy_chunks(
                policy, {k: batch["raw_next_obs"][k] for k in scorer.config.obs_shapes}, cfg.aloe.num_samples,
                cfg.aloe.policy_steps, gen))
        loss = critics.loss(batch["obs"], batch["actions"], batch["reward_sum"], batch["h_eff"], batch["done"],
                            batch["next_obs"], nxt, weight=weight)
        with torch.no_grad():
            q = critics.critic(batch["obs"], batch["actions"]).min(0).values.mean()
        return loss, {"loss": float(loss.detach()), "q_mean": float(q)}
    out = critics.losses(batch["obs"], batch["actions"], batch["reward_sum"], batch["h_eff"], batch["done"],
                         batch["next_obs"], weight)
    with torch.no_grad():
        q = scorer.critic(batch["obs"], batch["actions"]).mean()
    return out["total"], {f"loss_{k}" if k != "total" else "loss": float(v.detach()) for k, v in out.items()} | {
        "q_mean": float(q)}


# ============================================================================================ AWR
def awr_loss(policy: DiffusionPolicy, obs: dict[str, torch.Tensor], action: torch.Tensor, weight: torch.Tensor,
             gen: torch.Generator) -> torch.Tensor:
    """Advantage-weighted denoising loss: mean_b w_b * mean_{T,Da} (eps_theta(x_t, t, s) - eps)^2 for the policy's
    windows (obs (B, To, ...), action (B, T, Da) env units), weights (B,) detached."""
    c = policy.config
    b = action.shape[0]
    t = torch.randint(0, c.scheduler.num_train_timesteps, (b,), generator=gen)
    eps = torch.randn(action.shape, generator=gen)
    x0 = policy.normalizer.normalize("action", action.to(torch.float32))
    x_t = policy.schedule.add_noise(x0, eps, t)
    per = ((policy.denoiser(x_t, t, policy.encode_obs(obs).cond) - eps) ** 2).flatten(1).mean(1)
    return (weight.detach() * per).mean()


@torch.no_grad()
def awr_weights(cfg: CriticStageConfig, scorer: CriticScorer, proposal: DiffusionPolicy,
                obs: dict[str, torch.Tensor], action: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(B,) weights from A = min_i Q_i(s, executed window actions) - mean_m min_i Q_i(s, a_m ~ proposal);
    awr.mode none: ones, without querying the critic."""
    if cfg.awr.mode == "none":
        return torch.ones(action.shape[0])
    start = proposal.executed_slice.start
    h = cfg.critic.h
    feat = scorer.encode_obs({k: obs[k] for k in scorer.config.obs_shapes})
    q_data = scorer.critic(feat, scorer.normalize_actions(action[:, start:start + h]))
    m = cfg.aloe.num_samples
    samples = policy_chunks(proposal, obs, m, cfg.aloe.policy_steps, gen)  # (M, B, Ta, Da)
    q_pol = scorer.critic(feat.repeat(m, 1), scorer.normalize_actions(samples.flatten(0, 1)))
    adv = aloe_advantage(q_data, q_pol.reshape(q_pol.shape[0], m, -1))
    a = cfg.awr
    return advantage_weights(adv, a.beta, a.mode, a.w_max)


def awr_finetune(cfg: CriticStageConfig, scorer: CriticScorer, proposal: DiffusionPolicy, extra: dict,
                 obs_keys: list[str], run_dir: Path, logger: RunLogger, stop: StopRequest, show_progress: bool
                 ) -> tuple[DiffusionPolicy, bool]:
    """Fine-tune a copy of the policy on the stores' windows with AWR weights. -> (the policy to evaluate: the
    fine-tune's EMA, or its live weights with awr.ema_decay 0; interrupted)."""
    from robotstack.train.distill import load_windows, sample_batch

    a, t = cfg.awr, cfg.train
    pc = proposal.config
    policy = copy.deepcopy(proposal).train().requires_grad_(True)
    policy.normalizer.requires_grad_(False)
    windows = load_windows(cfg.data.paths, list(pc.obs_shapes), pc.n_obs_steps, pc.horizon)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.0)
    ema = EMA(policy, min_decay=a.ema_decay, max_decay=a.ema_decay) if a.ema_decay else None
    averaged = ema.averaged if ema is not None else None
    awr_dir = run_dir / "awr"
    start = 0
    latest = awr_dir / "checkpoints" / "latest"
    if (latest / "train_state.json").is_file():
        if averaged is not None and not (latest / EMA_FILE).is_file():
            raise ConfigError(f"--resume: {latest} has no {EMA_FILE} (an AWR fine-tune without EMA); resume it with "
                              f"awr.ema_decay=0")
        start = int(restore_run_checkpoint(awr_dir, policy, opt, averaged)["step"])
        if ema is not None:
            ema.step = start
    awr_extra = extra | {"stage": "critic_awr", "awr_from": str(cfg.policy), "critic_run": str(run_dir)}
    bar = progress_bar("awr fine-tune", show_progress)
    task = bar.add_task("awr", total=a.steps, completed=start, status="")
    interrupted = False
    with bar:
        for step in range(start, a.steps):
            obs, action = sample_batch(windows, list(pc.obs_shapes), a.batch_size, numpy_rng(t.seed, step, 7))
            gen = torch_gen(t.seed, step, stream=8)
            w = awr_weights(cfg, scorer, proposal, obs, action, gen)
            loss = awr_loss(policy, obs, action, w, gen)
            gradient_step(opt, loss)
            if ema is not None:
                ema.update(policy)
            done = step + 1
            if t.log_due(done) or done == a.steps:
                logger.log(t.steps + done, {"awr/loss": float(loss.detach()), "awr/w_mean": float(w.mean()),
                                            "awr/w_max": float(w.max())})
            bar.update(task, completed=done, status=f"loss {float(loss.detach()):.4f}")
            interrupted = stop.requested
            if done == a.steps or interrupted or (a.checkpoint_every and done % a.checkpoint_every == 0):
                policy.eval()
                save_run_checkpoint(awr_dir, done, policy, opt, averaged, extra=awr_extra | {"step": done})
                policy.train()
            if interrupted:
                break
    return (averaged if averaged is not None else policy).eval(), interrupted


# ============================================================================================= loop
def _save(run_dir: Path, step: int, cfg: CriticStageConfig, scorer: CriticScorer, critics: nn.Module,
          opt: torch.optim.Optimizer, extra: dict, log_window: dict) -> Path:
    def write(d: Path) -> None:
        save_scorer(d, scorer, extra | {"step": step})
        save_file({k: v.detach().contiguous().clone() for k, v in critics.state_dict().items()}, str(d / CRITICS_FILE))

    return save_run_checkpoint(run_dir, step, None, opt, state={"seed": cfg.train.seed, "log_window": log_window},
                               keep=cfg.train.keep_checkpoints, write_model=write)


def _restore(run_dir: Path, scorer: CriticScorer, critics: nn.Module, opt: torch.optim.Optimizer) -> dict:
    latest = run_dir / "checkpoints" / "latest"
    if not (latest / "train_state.json").is_file():
        raise ConfigError(f"--resume {run_dir}: no complete checkpoint at {latest} (nothing to resume)")
    critics.load_state_dict(load_file(str(latest / CRITICS_FILE)), strict=True)
    scorer.load_state_dict(load_file(str(latest / "scorer.safetensors")), strict=True)
    return load_training_state(latest, opt)


def evaluate_after(cfg: CriticStageConfig, task: str, policy: DiffusionPolicy, scorer: CriticScorer,
                   awr_policy: DiffusionPolicy | None, run_dir: Path) -> dict:
    from policies.critics.scorer import BestOfNPolicy
    from robotstack.eval.rollout import evaluate

    e = cfg.eval
    kw = dict(episodes=e.episodes, seed=e.seed, max_episode_steps=e.max_episode_steps or None, show_progress=False)
    out = {}
    res = evaluate(BestOfNPolicy(policy, scorer, e.num_candidates), task, out_dir=run_dir / "eval" / "best_of_n",
                   **kw).summary()
    out |= {"eval_success_rate": res["success_rate"], "eval_ci95": [res["ci95_low"], res["ci95_high"]]}
    if awr_policy is not None:
        res = evaluate(awr_policy, task, out_dir=run_dir / "eval" / "awr", **kw).summary()
        out |= {"awr_eval_success_rate": res["success_rate"], "awr_eval_ci95": [res["ci95_low"], res["ci95_high"]]}
    return out


def train(cfg: CriticStageConfig, run_dir: str | Path, resume: bool = False, show_progress: bool = True,
          stop_at: int | None = None) -> dict:
    """Train (or resume) the critic to cfg.train.steps, then AWR (awr.steps) and evaluation (eval.episodes).
    `stop_at` ends right after the step-`stop_at` critic checkpoint (as a kill would). -> summary dict."""
    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    run_dir = Path(run_dir)
    # every check before any work: policy, task, keys, stores, rewards
    policy, extra = open_policy(cfg)
    task, obs_keys = check_against_policy(cfg, policy, extra)
    sampler, arrays = load_chunks(cfg, obs_keys, policy.config.n_obs_steps)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / CONFIG_NAME)
    scorer = build_scorer(cfg, policy, obs_keys, arrays)
    critics = build_critics(cfg, scorer)
    params = [p for p in critics.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    ckpt_extra = {"stage": "critic", "method": cfg.method, "variant": cfg.critic.variant, "task": task,
                  "policy": str(cfg.policy), "data_paths": cfg.data.paths, "gamma": cfg.critic.gamma,
                  "h": cfg.critic.h, "h_a": cfg.critic.h_a, "obs_keys": obs_keys,
                  "features": "obs_window (normalised, flattened; not the policy encoder)",
                  "critic": dataclasses.asdict(cfg.critic)}
    start, window = 0, MetricWindow()
    if resume:
        meta = _restore(run_dir, scorer, critics, opt)
        start = int(meta["step"])
        window = MetricWindow(meta.get("log_window"))
        truncate_metrics(run_dir, start)
    end = t.steps if stop_at is None else min(t.steps, stop_at)
    logger = RunLogger(run_dir)
    bar = progress_bar(f"train critic {cfg.method}/{cfg.critic.variant} {task}", show_progress)
    bar_task = bar.add_task("critic", total=t.steps, completed=start, status="")
    t0, interrupted, awr_policy = time.perf_counter(), False, None
    cache = None
    if cfg.method == "aloe" and cfg.aloe.cache_targets and start < end:
        cache = TargetChunkCache(sampler, policy, scorer, cfg.aloe.num_samples, cfg.aloe.policy_steps, t.seed,
                                 show_progress=show_progress)
    cache_s = time.perf_counter() - t0
    critics.train()
    try:
        with StopRequest() as stop:
            with bar:
                for step in range(start, end):
                    lr = t.lr_at(step)
                    set_lr(opt, lr)
                    batch = to_torch(sampler.sample(numpy_rng(t.seed, step), t.batch_size), scorer)
                    loss, metrics = critic_step(cfg, critics, scorer, policy, batch, torch_gen(t.seed, step, 1),
                                                cache)
                    gradient_step(opt, loss, params, t.grad_clip)
                    critics.update_target()
                    window.add(metrics)
                    done = step + 1
                    if t.log_due(done):
                        row = window.row(lr)
                        logger.log(done, row)
                        bar.update(bar_task, status=f"loss {row['loss']:.4f} q {row['q_mean']:.3f}")
                    bar.update(bar_task, completed=done)
                    interrupted = stop.requested
                    if t.checkpoint_due(done, end, interrupted):
                        _save(run_dir, done, cfg, scorer, critics, opt, ckpt_extra, window.state())
                    if interrupted:
                        end = done
                        break
            if not interrupted and end == t.steps and cfg.awr.steps:
                awr_policy, interrupted = awr_finetune(cfg, scorer.eval(), policy, extra, obs_keys, run_dir, logger,
                                                       stop, show_progress)
    finally:
        logger.close()
    scorer.eval()
    metrics = read_metrics(run_dir)
    summary = {"run_dir": str(run_dir), "task": task, "method": cfg.method, "variant": cfg.critic.variant,
               "steps": end, "steps_this_run": max(0, end - start), "wall_s": time.perf_counter() - t0,
               "final_loss": next((r["loss"] for r in reversed(metrics) if "loss" in r), None),
               "final_q_mean": next((r["q_mean"] for r in reversed(metrics) if "q_mean" in r), None),
               "n_chunks": len(sampler), "scorer": str(run_dir / "checkpoints" / "latest"),
               "target_cache_s": cache_s if cache is not None else None, "interrupted": interrupted}
    if awr_policy is not None:
        summary["awr_policy"] = str(run_dir / "awr" / "checkpoints" / "latest")
    if not interrupted and end == t.steps and cfg.eval.episodes:
        summary |= evaluate_after(cfg, task, policy, scorer, awr_policy, run_dir)
    summary["wall_s"] = time.perf_counter() - t0
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


# ============================================================================================= main
def resolve_config(config: str | None, overrides: list[str], resume: str | None) -> CriticStageConfig:
    try:
        return resolve_stage_config(CriticStageConfig, "train critic", config, overrides, resume)
    except ValueError as exc:  # ChunkCriticConfig's own domain checks (a frozen chunked.py dataclass)
        if isinstance(exc, RobotstackError):
            raise
        raise ConfigError(f"{resume or config}: in 'critic': {exc}") from exc


def default_run_dir(cfg: CriticStageConfig) -> Path:
    name = Path(cfg.policy).resolve().parent.parent.name or "policy"
    return Path("runs") / "critic" / f"{name}_{cfg.method}_{cfg.critic.variant}_{time.strftime('%Y%m%d_%H%M%S')}"


def main(config: str | None, overrides: list[str], resume: str | None = None, out: str | None = None,
         show_progress: bool = True) -> dict:
    cfg = resolve_config(config, overrides, resume)
    run_dir = run_dir_for(resume, out, default_run_dir(cfg))
    summary = train(cfg, run_dir, resume=bool(resume), show_progress=show_progress)
    print_summary(f"train critic -> {run_dir}", summary)
    if summary["interrupted"]:
        print(f"interrupted: checkpoint saved; continue with `robotstack train critic --resume {run_dir}`")
    return summary
