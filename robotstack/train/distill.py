"""Stage: consistency distillation of a trained diffusion policy into a one-step student (`robotstack distill`).

Read top to bottom: config -> data -> builders -> loss functions (named, pure) -> target update -> loop -> main.

Glossary: B batch, To obs history, T horizon, Da action dim, Dc obs-cond width, K teacher DDIM steps,
N Karras bins, sigma EDM noise level (x_sigma = x0 + sigma z), t/u/s bins with t < u <= s (larger bin =
less noise), mu target-network EMA.

Methods (rti_consistency.md §2, rl100.md §6):
- "rl100": same-noise distillation to the K-step DDIM teacher. Draw z, run the teacher's deterministic DDIM
  chain x_K = z .. x_0 (no grad); the student predicts x_0 from (x_k, t_k) in one call, MSE on the chunk.
  k = 0 (RL-100's exact objective: from the pure noise) half of the time, else a uniform grid point, so the
  chained (3-step) student is also trained at the re-noised points. RL-100 takes the MSE over the executed
  slice; we use the whole chunk (a superset; it keeps chaining and RTI-style reuse meaningful).
- "ctm" (Consistency Policy, CTM-local): the teacher is the DDPM epsilon-model read as an EDM denoiser
  (`edm.EpsTeacher`); t ~ U{0..N-2}, u = t+1 (adjacent bins), s ~ U{u..N-1};
      x_t = x0 + sigma_t z;  x_u = Heun(teacher, x_t, sigma_t -> sigma_u)                    (no grad)
      L_CTM = d( G_sg(G_theta(x_t, t, s), s, smin), G_sg(G_sg(x_u, u, s), s, smin) )
      L_DSM = w(sigma) d( G_theta(x_sigma, sigma, smin), x0 ),  sigma half rho-grid (first 70%), half log-normal
      L = alpha L_CTM + beta L_DSM  (alpha = beta = 1),  d = pseudo-Huber (vector form, c = 0.00054 sqrt(T Da))
  G_sg uses the target network (mu = 0: the current weights under stop-grad, CP's shipped setting).
  DSM weight: CP multiplies lambda = (sigma^2 + sd^2)/(sigma sd)^2 with an (elementwise, ~squared) loss; our
  d is ~ an L2 norm (not squared), so the matching weight is sqrt(lambda) (`dsm_weighting: sqrt_karras`).
  CP's student dropout (0.2) is not used: the MLP denoiser has no dropout layer.
  With `policy.parameterization: teacher_eps` (the student reads its network as the teacher's epsilon, x0 =
  x - sigma F; policies/consistency/model.py) d(loss)/dF grows with sigma (x80 at sigma 80) where EDM's c_out
  caps it at sigma_d, so both terms are weighted by `eps_balance` = sigma_d / sqrt(sigma^2 + sigma_d^2) = EDM's
  c_out(sigma) / sigma, which restores EDM's per-sigma gradient scale on F within a batch.
Both: the student is warm-started from the teacher (encoder and normalizer copied and frozen; ctm's new
s-embedding columns zero-initialized); only the student's denoiser trains.

Run dir (the same layout as `train il`; robotstack/train/common.py):
    RUN_DIR/config.json                     resolved DistillConfig (what `--resume` restarts from)
    RUN_DIR/metrics.csv, RUN_DIR/tb/        loss (+ loss_ctm, loss_dsm | loss_cd), lr, steps/s
    RUN_DIR/checkpoints/step_N/             the student: model.safetensors (+ ema.safetensors = the target
                                            network when target_ema > 0; eval and export with weights "auto"
                                            then use it, as train il's EMA), config.json (policy "consistency"),
                                            optimizer.safetensors, train_state.json
    RUN_DIR/checkpoints/latest -> step_N    what `robotstack eval` / `export` open (policies.checkpoint)
Determinism and resume: the batch, noise and bins of step s come from generators seeded with (seed, s), so a
resumed run draws what the uninterrupted run drew.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robotstack.core import keys as K
from robotstack.core.config import load_config, save_config
from robotstack.core.errors import ConfigError, StoreError
from robotstack.core.progress import print_summary, progress_bar
from robotstack.data.sampler import SequenceSampler, policy_padding
from robotstack.data.store import load_stores
from robotstack.train.common import (CONFIG_NAME, LoopConfig, MetricWindow, RunLogger, StopRequest, numpy_rng,
                                     read_metrics, resolve_stage_config, restore_run_checkpoint, run_dir_for,
                                     save_run_checkpoint, set_lr, torch_gen, truncate_metrics)

from policies.checkpoint import load_checkpoint, read_extra
from policies.common.optim import gradient_step
from policies.consistency import edm
from policies.consistency.config import ConsistencyConfig, ConsistencyPolicyConfig
from policies.consistency.model import ConsistencyPolicy, warm_start_from
from policies.diffusion.model import ACTION_KEY, DiffusionPolicy


# =========================================================================================== config
@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)  # episode stores; [] = the teacher's training stores


@dataclass
class LossConfig:
    teacher_steps: int = 0  # rl100: K of the DDIM teacher; 0 = the teacher's num_inference_steps
    target_ema: float = 0.0  # ctm: mu of the target network
    ctm_weight: float = 1.0
    dsm_weight: float = 1.0
    dsm_weighting: str = "sqrt_karras"  # sqrt_karras | karras | uniform

    def __post_init__(self) -> None:
        if not 0.0 <= self.target_ema < 1.0:
            raise ConfigError(f"config loss.target_ema: must be in [0, 1), got {self.target_ema}")
        if self.dsm_weighting not in ("sqrt_karras", "karras", "uniform"):
            raise ConfigError(f"config loss.dsm_weighting: {self.dsm_weighting!r} not in sqrt_karras|karras|uniform")


@dataclass
class TrainConfig(LoopConfig):
    """The shared loop fields (train/common.py LoopConfig); only the defaults that differ from `train il`'s."""

    steps: int = 2000
    lr: float = 3e-4
    warmup_steps: int = 0
    grad_clip: float = 1.0
    num_threads: int = 1


@dataclass
class DistillConfig:
    teacher: str = ""  # teacher checkpoint dir (a diffusion policy), e.g. runs/il/push/checkpoints/latest
    teacher_weights: str = "ema"  # ema (when the teacher has them) | model
    data: DataConfig = field(default_factory=DataConfig)
    policy: ConsistencyConfig = field(default_factory=ConsistencyConfig)  # the student's own config section;
    #                                            its `base` (obs spec, T, denoiser, ...) is the teacher's config
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.teacher_weights not in ("ema", "model"):
            raise ConfigError(f"config teacher_weights: {self.teacher_weights!r} is not 'ema' or 'model'")


# ============================================================================================= data
def load_windows(paths: list[str], obs_keys: list[str], to: int, horizon: int) -> SequenceSampler:
    """Windows of the teacher's training data (obs keys (To, D), action (T, Da)), as in `train il`."""
    keys = [*obs_keys, K.ACTION]
    try:
        arrays, episode_ends, _ = load_stores(paths, keys)
    except StoreError as exc:
        raise ConfigError(f"distill data: {exc}") from exc
    return SequenceSampler(arrays, episode_ends, horizon, **policy_padding(horizon, to), keys=keys,
                           key_horizons={k: to for k in obs_keys})


def sample_batch(windows: SequenceSampler, obs_keys: list[str], batch_size: int, rng: np.random.Generator
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    raw = windows.sample_batch(rng.integers(0, len(windows), batch_size))
    obs = {k: torch.from_numpy(np.ascontiguousarray(raw[k])) for k in obs_keys}
    return obs, torch.from_numpy(np.ascontiguousarray(raw[K.ACTION])).to(torch.float32)


# ========================================================================================= builders
def build_teacher(cfg: DistillConfig) -> DiffusionPolicy:
    if not cfg.teacher:
        raise ConfigError("config teacher: the teacher checkpoint dir is required (--checkpoint DIR or teacher=DIR)")
    teacher = load_checkpoint(cfg.teacher, weights="auto" if cfg.teacher_weights == "ema" else "model")
    if not isinstance(teacher, DiffusionPolicy):
        raise ConfigError(f"config teacher {cfg.teacher}: needs a diffusion policy teacher, got "
                          f"{type(teacher).__name__}")
    teacher.eval().requires_grad_(False)
    return teacher


def build_student(cfg: DistillConfig, teacher: DiffusionPolicy) -> ConsistencyPolicy:
    torch.manual_seed(cfg.train.seed)
    student = ConsistencyPolicy(ConsistencyPolicyConfig(base=teacher.config, consistency=cfg.policy))
    warm_start_from(student, teacher)
    student.normalizer.requires_grad_(False)
    student.obs_encoder.requires_grad_(False).eval()  # frozen encoder (CP), its cond = the teacher's
    return student


# ============================================================================================= loss
def rl100_same_noise_loss(student: ConsistencyPolicy, teacher: DiffusionPolicy, cond: torch.Tensor,
                          teacher_steps: int, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """cond (B, Dc) -> MSE between the student's one-call x0 from (x_k, t_k) and the DDIM teacher's x0."""
    c = teacher.config
    b = cond.shape[0]
    ts, prev = teacher.schedule.timesteps("ddim", teacher_steps)
    z = torch.randn((b, c.horizon, c.action_dim), generator=gen)
    with torch.no_grad():
        chain, x = [z], z
        for t, tp in zip(ts, prev):
            x = teacher.denoise_step_distribution(x, t, tp, cond, kind="ddim", eta=0.0, clip=False).mean
            chain.append(x)
        target = x
    k = torch.where(torch.rand(b, generator=gen) < 0.5, torch.zeros(b, dtype=torch.long),
                    torch.randint(0, len(ts), (b,), generator=gen))
    x_in = torch.stack(chain[:-1], 1)[torch.arange(b), k]  # (B, T, Da)
    t_in = torch.tensor(ts)[k]
    pred = student.rl100_jump(x_in, t_in, cond)
    loss = torch.mean((pred - target) ** 2)
    return loss, {"loss": float(loss.detach()), "loss_cd": float(loss.detach())}


def dsm_sigmas(cc: ConsistencyConfig, b: int, gen: torch.Generator) -> torch.Tensor:
    """Half from the rho-grid over its first 70% (from sigma_max down), half log-normal(-1.2, 1.2)."""
    xi = torch.rand(b, generator=gen, dtype=torch.float64) * 0.7
    a, m = cc.sigma_max ** (1 / cc.rho), cc.sigma_min ** (1 / cc.rho)
    grid = (a + xi * (m - a)) ** cc.rho
    logn = torch.exp(-1.2 + 1.2 * torch.randn(b, generator=gen, dtype=torch.float64))
    half = torch.rand(b, generator=gen) < 0.5
    return torch.where(half, grid, logn).clamp(cc.sigma_min, cc.sigma_max).float()


def eps_balance(sigma: torch.Tensor, cc: ConsistencyConfig) -> torch.Tensor:
    """(B,) -> (B,) sigma_d / sqrt(sigma^2 + sigma_d^2) for parameterization teacher_eps, else ones (module doc)."""
    if cc.parameterization != "teacher_eps":
        return torch.ones_like(sigma)
    return cc.sigma_data / (sigma ** 2 + cc.sigma_data ** 2).sqrt()


def dsm_weight(sigma: torch.Tensor, cc: ConsistencyConfig, weighting: str) -> torch.Tensor:
    lam = edm.karras_weight(sigma, cc.sigma_data)
    return {"karras": lam, "sqrt_karras": lam.sqrt(), "uniform": torch.ones_like(lam)}[weighting]


def ctm_loss(student: ConsistencyPolicy, target: ConsistencyPolicy, teacher_d: edm.EpsTeacher, x0: torch.Tensor,
             cond: torch.Tensor, cfg: DistillConfig, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """x0 (B, T, Da) normalized data chunks, cond (B, Dc) -> alpha L_CTM + beta L_DSM."""
    cc = cfg.policy
    b, n = x0.shape[0], cc.bins
    sig = student.sigmas
    t_bin = torch.randint(0, n - 1, (b,), generator=gen)
    u_bin = t_bin + 1
    s_bin = u_bin + (torch.rand(b, generator=gen) * (n - u_bin).float()).long().clamp(max=n - 1 - u_bin)
    s_t, s_u, s_s = sig[t_bin], sig[u_bin], sig[s_bin]
    s_min = torch.full((b,), cc.sigma_min)
    x_t = x0 + s_t.reshape(-1, 1, 1) * torch.randn(x0.shape, generator=gen)
    with torch.no_grad():
        teacher_d.cond = cond
        x_u = edm.heun_step(teacher_d, x_t, s_t, s_u)
        tgt = target.ctm_jump(target.ctm_jump(x_u, s_u, s_s, cond), s_s, s_min, cond)
    pred = target.ctm_jump(student.ctm_jump(x_t, s_t, s_s, cond), s_s, s_min, cond)  # grads via the inner jump
    l_ctm = (eps_balance(s_t, cc) * edm.pseudo_huber(pred, tgt)).mean()

    sigma = dsm_sigmas(cc, b, gen)
    x_s = x0 + sigma.reshape(-1, 1, 1) * torch.randn(x0.shape, generator=gen)
    den = student.ctm_jump(x_s, sigma, s_min, cond)
    l_dsm = (eps_balance(sigma, cc) * dsm_weight(sigma, cc, cfg.loss.dsm_weighting) * edm.pseudo_huber(den, x0)).mean()
    loss = cfg.loss.ctm_weight * l_ctm + cfg.loss.dsm_weight * l_dsm
    return loss, {"loss": float(loss.detach()), "loss_ctm": float(l_ctm.detach()), "loss_dsm": float(l_dsm.detach())}


# ==================================================================================== target update
@torch.no_grad()
def update_target(target: nn.Module, online: nn.Module, mu: float) -> None:
    """theta_minus <- mu theta_minus + (1 - mu) theta (mu = 0: a copy of the online weights)."""
    for p_t, p in zip(target.parameters(), online.parameters()):
        p_t.mul_(mu).add_(p.detach(), alpha=1.0 - mu)


# ============================================================================================= loop
def _student_extra(cfg: DistillConfig, teacher_extra: dict, obs_keys: list[str], paths: list[str], k_teacher: int,
                   step: int) -> dict:
    return {"stage": "distill", "step": step, "task": teacher_extra.get("task"), "obs_keys": obs_keys,
            "task_spec": teacher_extra.get("task_spec"), "data_paths": paths, "teacher": str(cfg.teacher),
            "teacher_weights": cfg.teacher_weights, "method": cfg.policy.method, "teacher_ddim_steps": k_teacher}


def distill(cfg: DistillConfig, run_dir: str | Path, resume: bool = False, show_progress: bool = True,
            stop_at: int | None = None) -> tuple[ConsistencyPolicy, dict]:
    """Distill (or resume) to cfg.train.steps. `stop_at` ends early right after the step-`stop_at` checkpoint
    (as a kill after it would); Ctrl-C saves a checkpoint at the current step and returns
    (summary["interrupted"] True). -> (student, summary)."""
    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / CONFIG_NAME)
    teacher = build_teacher(cfg)
    teacher_extra = read_extra(cfg.teacher)
    obs_keys = list(teacher.config.obs_shapes)
    paths = cfg.data.paths or list(teacher_extra.get("data_paths", []))
    if not paths:
        raise ConfigError(f"config data.paths: {cfg.teacher}/config.json has no extra.data_paths; pass --data")
    tc = teacher.config
    windows = load_windows(paths, obs_keys, tc.n_obs_steps, tc.horizon)
    student = build_student(cfg, teacher)
    mu = cfg.loss.target_ema
    target = copy.deepcopy(student).requires_grad_(False)
    teacher_d = edm.EpsTeacher(teacher.denoiser, teacher.schedule.alphas_cumprod,
                               clip=tc.scheduler.clip_sample_range if tc.scheduler.clip_sample else None)
    k_teacher = cfg.loss.teacher_steps or tc.scheduler.num_inference_steps
    opt = torch.optim.AdamW(student.denoiser.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    start, window = 0, MetricWindow()
    if resume:
        # the target network is the EMA file when mu > 0; with mu = 0 it is a copy of the student
        meta = restore_run_checkpoint(run_dir, student, opt, target if mu > 0 else None)
        if mu == 0:
            target.load_state_dict(student.state_dict())
        start = int(meta["step"])
        window = MetricWindow({"sums": meta.get("log_sums", {}), "n": meta.get("log_n", 0)})
        truncate_metrics(run_dir, start)
    end = t.steps if stop_at is None else min(t.steps, stop_at)
    logger = RunLogger(run_dir)
    bar = progress_bar(f"distill {cfg.policy.method}", show_progress)
    task = bar.add_task("distill", total=t.steps, completed=start, status="")
    t0, interrupted = time.perf_counter(), False
    student.denoiser.train()
    try:
        with bar, StopRequest() as stop:
            for step in range(start, end):
                lr = t.lr_at(step)
                set_lr(opt, lr)
                obs, action = sample_batch(windows, obs_keys, t.batch_size, numpy_rng(t.seed, step))
                gen = torch_gen(t.seed, step, stream=1)
                with torch.no_grad():
                    cond = teacher.encode_obs(obs, deterministic=True).cond
                    x0 = teacher.normalizer.normalize(ACTION_KEY, action)
                if cfg.policy.method == "rl100":
                    loss, metrics = rl100_same_noise_loss(student, teacher, cond, k_teacher, gen)
                else:
                    loss, metrics = ctm_loss(student, target, teacher_d, x0, cond, cfg, gen)
                gradient_step(opt, loss, student.denoiser.parameters(), t.grad_clip)
                update_target(target, student, mu)
                window.add(metrics)
                done = step + 1
                if t.log_due(done):
                    row = window.row(lr)
                    logger.log(done, row)
                    bar.update(task, status=f"loss {row['loss']:.4f}")
                bar.update(task, completed=done)
                interrupted = stop.requested
                if t.checkpoint_due(done, end, interrupted):
                    student.eval()
                    save_run_checkpoint(run_dir, done, student, opt, target if mu > 0 else None,
                                        extra=_student_extra(cfg, teacher_extra, obs_keys, paths, k_teacher, done),
                                        state={"seed": t.seed, "log_sums": window.sums, "log_n": window.n},
                                        keep=t.keep_checkpoints)
                    student.denoiser.train()
                if interrupted:
                    end = done
                    break
    finally:
        logger.close()
    student.eval()
    losses = [r["loss"] for r in read_metrics(run_dir) if "loss" in r]
    summary = {"run_dir": str(run_dir), "method": cfg.policy.method, "steps": end,
               "steps_this_run": max(0, end - start), "wall_s": time.perf_counter() - t0,
               "final_loss": losses[-1] if losses else None, "teacher": str(cfg.teacher), "interrupted": interrupted}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return student, summary


# ============================================================================================= main
def resolve_config(config: str | None, overrides: list[str], resume: str | None) -> DistillConfig:
    """Without --config (the `--checkpoint TEACHER` shortcut) the defaults are DistillConfig's (ctm)."""
    if config is None and not resume:
        return load_config(DistillConfig, None, overrides)
    return resolve_stage_config(DistillConfig, "distill", config, overrides, resume)


def default_run_dir(cfg: DistillConfig) -> Path:
    name = Path(cfg.teacher).resolve().parent.parent.name or "teacher"  # RUN_DIR/checkpoints/latest -> RUN_DIR
    return Path("runs") / "distill" / f"{name}_{cfg.policy.method}_{time.strftime('%Y%m%d_%H%M%S')}"


def main(config: str | None, overrides: list[str], resume: str | None = None, out: str | None = None,
         show_progress: bool = True) -> dict:
    cfg = resolve_config(config, overrides, resume)
    run_dir = run_dir_for(resume, out, default_run_dir(cfg))
    _, summary = distill(cfg, run_dir, resume=bool(resume), show_progress=show_progress)
    print_summary(f"distill -> {run_dir}", summary)
    if summary["interrupted"]:
        print(f"interrupted: checkpoint saved at step {summary['steps']}; continue with "
              f"`robotstack distill --resume {run_dir}`")
    return summary
