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
Both: the student is warm-started from the teacher (encoder and normalizer copied and frozen; ctm's new
s-embedding columns zero-initialized); only the student's denoiser trains.

Output: a checkpoint dir (model.safetensors + config.json, policy "consistency") opened by
`policies.checkpoint.load_checkpoint` (like every policy), plus metrics.csv and TensorBoard logs.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robotstack.core import keys as K
from robotstack.core.errors import ConfigError, StoreError
from robotstack.data.sampler import SequenceSampler
from robotstack.data.store import load_stores
from robotstack.train.common import RunLogger, numpy_rng, progress_bar, torch_gen

from policies.checkpoint import load_checkpoint, read_config, save_checkpoint
from policies.consistency import edm
from policies.consistency.config import METHODS, ConsistencyConfig, ConsistencyPolicyConfig
from policies.consistency.model import ConsistencyPolicy, warm_start_from
from policies.diffusion.model import ACTION_KEY, DiffusionPolicy


# =========================================================================================== config
@dataclass
class DistillConfig:
    checkpoint: str = ""  # teacher checkpoint dir (a DiffusionPolicy)
    method: str = "ctm"  # ctm | rl100
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-6
    grad_clip: float = 1.0
    seed: int = 0
    num_threads: int = 1
    teacher_weights: str = "ema"  # ema (when present) | model
    data_paths: list[str] = field(default_factory=list)  # default: the teacher's training stores
    log_every: int = 50
    # rl100
    teacher_steps: int = 0  # K of the DDIM teacher; 0 = the teacher's num_inference_steps
    # ctm
    target_ema: float = 0.0  # mu
    ctm_weight: float = 1.0
    dsm_weight: float = 1.0
    dsm_weighting: str = "sqrt_karras"  # sqrt_karras | karras | uniform
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ConfigError("distill: --checkpoint (the teacher checkpoint dir) is required")
        if self.method not in METHODS:
            raise ConfigError(f"distill method {self.method!r} not in {METHODS}")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"distill: steps ({self.steps}) and batch_size ({self.batch_size}) must be >= 1")
        if not 0.0 <= self.target_ema < 1.0:
            raise ConfigError(f"distill target_ema must be in [0, 1), got {self.target_ema}")
        if self.dsm_weighting not in ("sqrt_karras", "karras", "uniform"):
            raise ConfigError(f"distill dsm_weighting {self.dsm_weighting!r} not in sqrt_karras|karras|uniform")
        self.consistency.method = self.method


# ============================================================================================= data
def load_windows(paths: list[str], obs_keys: list[str], to: int, horizon: int, ta: int
                 ) -> SequenceSampler:
    """Windows of the teacher's training data (obs keys (To, D), action (T, Da)), as in `train il`."""
    keys = [*obs_keys, K.ACTION]
    try:
        arrays, episode_ends, _ = load_stores(paths, keys)
    except StoreError as exc:
        raise ConfigError(f"distill data: {exc}") from exc
    return SequenceSampler(arrays, episode_ends, horizon, pad_before=to - 1, pad_after=ta - 1, keys=keys,
                           key_horizons={k: to for k in obs_keys})


def sample_batch(windows: SequenceSampler, obs_keys: list[str], batch_size: int, rng: np.random.Generator
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    raw = windows.sample_batch(rng.integers(0, len(windows), batch_size))
    obs = {k: torch.from_numpy(np.ascontiguousarray(raw[k])) for k in obs_keys}
    return obs, torch.from_numpy(np.ascontiguousarray(raw[K.ACTION])).to(torch.float32)


# ========================================================================================= builders
def build_teacher(cfg: DistillConfig) -> DiffusionPolicy:
    teacher = load_checkpoint(cfg.checkpoint, weights="auto" if cfg.teacher_weights == "ema" else "model")
    if not isinstance(teacher, DiffusionPolicy):
        raise ConfigError(f"distill --checkpoint {cfg.checkpoint}: needs a diffusion policy teacher, got "
                          f"{type(teacher).__name__}")
    teacher.eval().requires_grad_(False)
    return teacher


def build_student(cfg: DistillConfig, teacher: DiffusionPolicy) -> ConsistencyPolicy:
    torch.manual_seed(cfg.seed)
    student = ConsistencyPolicy(ConsistencyPolicyConfig(base=teacher.config, consistency=cfg.consistency))
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


def dsm_weight(sigma: torch.Tensor, cc: ConsistencyConfig, weighting: str) -> torch.Tensor:
    lam = edm.karras_weight(sigma, cc.sigma_data)
    return {"karras": lam, "sqrt_karras": lam.sqrt(), "uniform": torch.ones_like(lam)}[weighting]


def ctm_loss(student: ConsistencyPolicy, target: ConsistencyPolicy, teacher_d: edm.EpsTeacher, x0: torch.Tensor,
             cond: torch.Tensor, cfg: DistillConfig, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """x0 (B, T, Da) normalized data chunks, cond (B, Dc) -> alpha L_CTM + beta L_DSM."""
    cc = cfg.consistency
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
    l_ctm = edm.pseudo_huber(pred, tgt).mean()

    sigma = dsm_sigmas(cc, b, gen)
    x_s = x0 + sigma.reshape(-1, 1, 1) * torch.randn(x0.shape, generator=gen)
    den = student.ctm_jump(x_s, sigma, s_min, cond)
    l_dsm = (dsm_weight(sigma, cc, cfg.dsm_weighting) * edm.pseudo_huber(den, x0)).mean()
    loss = cfg.ctm_weight * l_ctm + cfg.dsm_weight * l_dsm
    return loss, {"loss": float(loss.detach()), "loss_ctm": float(l_ctm.detach()), "loss_dsm": float(l_dsm.detach())}


# ==================================================================================== target update
@torch.no_grad()
def update_target(target: nn.Module, online: nn.Module, mu: float) -> None:
    """theta_minus <- mu theta_minus + (1 - mu) theta (mu = 0: a copy of the online weights)."""
    for p_t, p in zip(target.parameters(), online.parameters()):
        p_t.mul_(mu).add_(p.detach(), alpha=1.0 - mu)


# ============================================================================================= loop
def distill(cfg: DistillConfig, out: str | Path, show_progress: bool = True) -> tuple[ConsistencyPolicy, dict]:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = build_teacher(cfg)
    _, _, extra = read_config(cfg.checkpoint)
    obs_keys = list(teacher.config.obs_shapes)
    paths = cfg.data_paths or list(extra.get("data_paths", []))
    if not paths:
        raise ConfigError(f"distill: {cfg.checkpoint}/config.json has no extra.data_paths; pass --data")
    tc = teacher.config
    windows = load_windows(paths, obs_keys, tc.n_obs_steps, tc.horizon, tc.n_action_steps)
    student = build_student(cfg, teacher)
    target = copy.deepcopy(student).requires_grad_(False)
    teacher_d = edm.EpsTeacher(teacher.denoiser, teacher.schedule.alphas_cumprod,
                               clip=tc.scheduler.clip_sample_range if tc.scheduler.clip_sample else None)
    k_teacher = cfg.teacher_steps or tc.scheduler.num_inference_steps
    opt = torch.optim.AdamW(student.denoiser.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    logger = RunLogger(out / "logs")
    bar = progress_bar(cfg.steps, f"distill {cfg.method}", show_progress)
    task = bar.add_task("distill", total=cfg.steps, status="")
    t0, window, last = time.perf_counter(), [], {}
    student.denoiser.train()
    with bar:
        for step in range(cfg.steps):
            lr = cfg.lr * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
            for g in opt.param_groups:
                g["lr"] = lr
            obs, action = sample_batch(windows, obs_keys, cfg.batch_size, numpy_rng(cfg.seed, step))
            gen = torch_gen(cfg.seed, step, stream=1)
            with torch.no_grad():
                cond = teacher.encode_obs(obs, deterministic=True).cond
                x0 = teacher.normalizer.normalize(ACTION_KEY, action)
            if cfg.method == "rl100":
                loss, metrics = rl100_same_noise_loss(student, teacher, cond, k_teacher, gen)
            else:
                loss, metrics = ctm_loss(student, target, teacher_d, x0, cond, cfg, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(student.denoiser.parameters(), cfg.grad_clip)
            opt.step()
            update_target(target, student, cfg.target_ema)
            window.append(metrics)
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                last = {k: float(np.mean([m[k] for m in window])) for k in window[0]} | {"lr": lr}
                last["steps_per_s"] = (step + 1) / (time.perf_counter() - t0)
                logger.log(step + 1, last)
                window = []
                bar.update(task, status=f"loss {last['loss']:.4f}")
            bar.update(task, advance=1)
    logger.close()
    student.eval()
    summary = {"method": cfg.method, "steps": cfg.steps, "final_loss": last.get("loss"),
               "wall_s": time.perf_counter() - t0, "teacher": str(cfg.checkpoint)}
    save_checkpoint(out, student, extra={"stage": "distill", "task": extra.get("task"), "obs_keys": obs_keys,
                                      "action_scale": extra.get("action_scale"),
                                      "data_paths": paths, "teacher": str(cfg.checkpoint),
                                      "teacher_weights": cfg.teacher_weights, "method": cfg.method,
                                      "distill_steps": cfg.steps, "teacher_ddim_steps": k_teacher,
                                      "final_loss": last.get("loss")})
    return student, summary


def main(checkpoint: str, out: str, method: str = "ctm", steps: int = 2000, overrides: dict[str, Any] | None = None,
         show_progress: bool = True) -> dict:
    cfg = DistillConfig(checkpoint=checkpoint, method=method, steps=steps, **(overrides or {}))
    _, summary = distill(cfg, out, show_progress=show_progress)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"distill -> {out}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in summary.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    Console().print(table)
    return summary
