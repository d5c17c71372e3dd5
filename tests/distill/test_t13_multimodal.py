"""rti_consistency.md §4.2 T13: the distilled 1-step CTM student ≈ its teacher on a conditional bimodal toy (slow).

Data: obs o ~ U[-1, 1] (one low-dim key, To = 1); the chunk (T = 8, Da = 2) is the straight line from (o, o) to
(g, -g), g = +1 or -1 with probability 0.5 each, plus N(0, 0.02^2) noise (env units):
    a_k = (1 - k/(T-1)) (o, o) + k/(T-1) (g, -g),  k = 0..T-1.

Pipeline, using only the public pieces of the existing code:
- teacher: `DiffusionPolicy` (MLP skip-net denoiser, DDPM epsilon objective via `compute_loss`) trained in memory;
- student: `robotstack.train.distill.build_student` + `ctm_loss` + `update_target`, in a loop that mirrors
  `distill()` (AdamW, cosine LR, grad clip 1, mu = 0 target update). `distill()` itself reads episode stores via
  a checkpoint's `extra.data_paths`; the loop is reproduced here so the toy data can be drawn fresh each step;
- teacher samples: the ODE the student is distilled from, i.e. Heun over the 80-bin Karras grid with the teacher
  read as an EDM denoiser (`edm.EpsTeacher`), from z * sigma_max (CP's `conditional_sample_teacher`, §2.1);
  teacher' = the same sampler and obs with independent noise;
- student samples: `ConsistencyPolicy.predict_action` (1 step) with the standard init z * sigma_max.

Checks (spec T13): each mode's mass in 0.5 ± 0.1; per-mode mean error < 0.05; MMD(student, teacher) <=
3 MMD(teacher, teacher') + 1e-3. CP's low-variance init (`init="unit"`: z ~ N(0, I) fed at sigma_max) is
printed as a diagnostic only.

Definitions:
- mode of a sample: the nearer (L2 over the chunk) of the two noise-free lines for its o;
- per-mode mean error: max over (k, d) of |mean over that mode's samples of (chunk - its noise-free line)|,
  env units (the error of the per-mode mean chunk against the data-generating mean);
- MMD: unbiased U-statistic MMD^2 with an RBF kernel exp(-||x - y||^2 / (2 h^2)) on the joint vector
  [flattened chunk (16), o] in env units, bandwidth h = 0.5. The two modes' lines are ≈ 4.8 apart, the
  data noise is 0.02 per element (≈ 0.08 over the chunk), so h = 0.5 resolves the modes and the within-mode
  shape while ignoring noise-level detail. All three sample sets share the same obs draws.

Run with `pytest -m slow -k t13 -s` to see the measured numbers (~1.5-3 min on one CPU thread).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

KEY, T, DA = "state", 8, 2
NOISE = 0.02
TEACHER_STEPS, TEACHER_BATCH, TEACHER_LR = 2000, 256, 1e-3
DISTILL_STEPS, DISTILL_BATCH, DISTILL_LR = 2000, 256, 1e-3
N_EVAL = 2000
MMD_BANDWIDTH = 0.5

# Measured with the settings above (1 CPU thread, deterministic seeds, ~2 min): see XFAIL_REASON. The assertions
# are kept as the spec states them; the test is xfail (non-strict) until the distiller meets them.
XFAIL_REASON = (
    "T13 measured (teacher 2000 DDPM steps; CTM distill 2000 steps, batch 256, lr 1e-3; 2000 eval samples): "
    "student mode masses 0.509/0.491 (pass); per-mode mean error 0.213/0.224 (> 0.05; teacher Heun 0.023/0.017); "
    "MMD^2(student, teacher) 2.35e-2 > bound 3*1.94e-4 + 1e-3 = 1.58e-3 (h=0.5). The 1-step student puts a "
    "fraction of its samples between the two modes. Not fixed by DistillConfig defaults + 3000 steps (mean error "
    "~0.26, MMD 3.2e-2), dsm_weighting=uniform at batch 64 (~0.24, 3.7e-2) or dsm_weight=0 at batch 128 (~0.10, "
    "5.7e-2). policy.parameterization=teacher_eps (bench/bench_cm_param.py, bench/results/cm_param.json): 0.58-0.65, MMD "
    "9.3e-2 from sigma_max 80; 0.23-0.24, MMD 1.9e-2 with sigma_max 2.")


def lines(o: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """o (B,), g (B,) in {-1, +1} -> noise-free chunks (B, T, Da)."""
    lam = torch.linspace(0.0, 1.0, T).reshape(1, T, 1)
    start = torch.stack([o, o], -1)[:, None, :]
    end = torch.stack([g, -g], -1)[:, None, :]
    return start + lam * (end - start)


def draw(b: int, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    o = torch.rand(b, generator=gen) * 2 - 1
    g = torch.where(torch.rand(b, generator=gen) < 0.5, 1.0, -1.0)
    chunk = lines(o, g) + NOISE * torch.randn(b, T, DA, generator=gen)
    return {KEY: o.reshape(b, 1, 1)}, chunk


def mode_stats(chunks: torch.Tensor, o: torch.Tensor) -> dict[str, float]:
    """-> mass of the +1 mode, per-mode mean error (inf for an empty mode)."""
    up, down = lines(o, torch.ones_like(o)), lines(o, -torch.ones_like(o))
    plus = ((chunks - up) ** 2).flatten(1).sum(1) < ((chunks - down) ** 2).flatten(1).sum(1)
    out = {"mass_plus": float(plus.float().mean()), "mass_minus": float((~plus).float().mean())}
    for name, sel, ref in (("plus", plus, up), ("minus", ~plus, down)):
        out[f"mean_err_{name}"] = float((chunks - ref)[sel].mean(0).abs().max()) if bool(sel.any()) else float("inf")
    return out


def mmd2(x: torch.Tensor, y: torch.Tensor, h: float = MMD_BANDWIDTH) -> float:
    """Unbiased MMD^2 between sample sets (N, D) and (M, D), RBF kernel of bandwidth h."""
    x, y = x.double(), y.double()

    def k(a, b):
        return torch.exp(-torch.cdist(a, b) ** 2 / (2 * h * h))

    n, m = len(x), len(y)
    kxx = (k(x, x).sum() - n) / (n * (n - 1))
    kyy = (k(y, y).sum() - m) / (m * (m - 1))
    return float(kxx + kyy - 2 * k(x, y).mean())


def train_teacher(gen: torch.Generator):
    from policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig
    from policies.diffusion.config import DenoiserConfig, EncoderConfig

    torch.manual_seed(0)
    cfg = DiffusionPolicyConfig(obs_shapes={KEY: (1,)}, action_dim=DA, n_obs_steps=1, horizon=T, n_action_steps=T,
                                action_start=0,
                                denoiser=DenoiserConfig(kind="mlp", mlp_width=128, mlp_depth=3, mlp_time_dim=32),
                                encoder=EncoderConfig(state_hidden=(64,), state_feature_dim=32))
    teacher = DiffusionPolicy(cfg)
    obs, chunk = draw(4096, gen)
    teacher.fit_normalizer({KEY: obs[KEY].reshape(-1, 1).numpy(), "action": chunk.reshape(-1, DA).numpy()})
    opt = torch.optim.AdamW(teacher.parameters(), lr=TEACHER_LR, weight_decay=1e-6)
    teacher.train()
    for step in range(TEACHER_STEPS):
        for group in opt.param_groups:
            group["lr"] = TEACHER_LR * 0.5 * (1 + np.cos(np.pi * step / TEACHER_STEPS))
        obs, chunk = draw(TEACHER_BATCH, gen)
        loss, _ = teacher.compute_loss({"obs": obs, "action": chunk}, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(teacher.parameters(), 1.0)
        opt.step()
    return teacher.eval().requires_grad_(False), float(loss.detach())


def distill_ctm(teacher, gen: torch.Generator, policy=None):
    """Mirror of robotstack.train.distill.distill's ctm loop, fed fresh toy batches. `policy`: the student's
    ConsistencyConfig (default: DistillConfig's); bench/bench_cm_param.py passes both parameterizations."""
    from policies.consistency import edm
    from policies.consistency.config import ConsistencyConfig
    from policies.diffusion.model import ACTION_KEY
    from robotstack.train.distill import DistillConfig, TrainConfig, build_student, ctm_loss, update_target

    cfg = DistillConfig(teacher="<in-memory teacher>", policy=policy or ConsistencyConfig(),
                        train=TrainConfig(steps=DISTILL_STEPS, batch_size=DISTILL_BATCH, lr=DISTILL_LR))
    t = cfg.train
    student = build_student(cfg, teacher)
    target = copy.deepcopy(student).requires_grad_(False)
    sc = teacher.config.scheduler
    teacher_d = edm.EpsTeacher(teacher.denoiser, teacher.schedule.alphas_cumprod,
                               clip=sc.clip_sample_range if sc.clip_sample else None)
    opt = torch.optim.AdamW(student.denoiser.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    student.denoiser.train()
    for step in range(t.steps):
        for group in opt.param_groups:
            group["lr"] = t.lr * 0.5 * (1 + np.cos(np.pi * step / t.steps))
        obs, chunk = draw(t.batch_size, gen)
        with torch.no_grad():
            cond = teacher.encode_obs(obs, deterministic=True).cond
            x0 = teacher.normalizer.normalize(ACTION_KEY, chunk)
        loss, metrics = ctm_loss(student, target, teacher_d, x0, cond, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.denoiser.parameters(), t.grad_clip)
        opt.step()
        update_target(target, student, cfg.loss.target_ema)
    return student.eval(), teacher_d, metrics


@torch.no_grad()
def teacher_heun_samples(teacher, teacher_d, cc, obs: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
    """Heun PF-ODE over the Karras grid (bins 0..N-1) from z * sigma_max, clamped, env units (B, T, Da)."""
    from policies.consistency import edm
    from policies.diffusion.model import ACTION_KEY

    b = obs[KEY].shape[0]
    sig = edm.karras_sigmas(cc.bins, cc.sigma_min, cc.sigma_max, cc.rho).float()
    teacher_d.cond = teacher.encode_obs(obs, deterministic=True).cond
    x = torch.randn(b, T, DA, generator=torch.Generator().manual_seed(seed)) * cc.sigma_max
    for i in range(len(sig) - 1):
        x = edm.heun_step(teacher_d, x, sig[i].expand(b), sig[i + 1].expand(b))
    return teacher.normalizer.unnormalize(ACTION_KEY, x.clamp(-1.0, 1.0))


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason=XFAIL_REASON)
def test_t13_one_step_student_matches_teacher_on_bimodal_toy():
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    teacher, teacher_loss = train_teacher(gen)
    t_teacher = time.perf_counter() - t_start
    student, teacher_d, distill_metrics = distill_ctm(teacher, gen)
    t_distill = time.perf_counter() - t_start - t_teacher
    cc = student.config.consistency
    assert cc.init == "sigma_max"  # the standard init is what the assertions test

    o = torch.rand(N_EVAL, generator=torch.Generator().manual_seed(123)) * 2 - 1
    obs = {KEY: o.reshape(N_EVAL, 1, 1)}
    teach = teacher_heun_samples(teacher, teacher_d, cc, obs, seed=1)
    teach2 = teacher_heun_samples(teacher, teacher_d, cc, obs, seed=2)
    stud = student.predict_action(obs, steps=1, generator=torch.Generator().manual_seed(3)).chunk
    low_var = copy.deepcopy(student)
    low_var.config.consistency.init = "unit"  # CP's z ~ N(0, I) fed at sigma_max (diagnostic only)
    stud_unit = low_var.predict_action(obs, steps=1, generator=torch.Generator().manual_seed(4)).chunk

    def joint(x):
        return torch.cat([x.flatten(1), o[:, None]], 1)

    s_t = mode_stats(teach, o)
    s_s, s_u = mode_stats(stud, o), mode_stats(stud_unit, o)
    mmd_tt = mmd2(joint(teach), joint(teach2))
    mmd_st = mmd2(joint(stud), joint(teach))
    mmd_ut = mmd2(joint(stud_unit), joint(teach))
    bound = 3 * mmd_tt + 1e-3
    wall = time.perf_counter() - t_start
    print(f"\nT13 teacher loss {teacher_loss:.4f} ({t_teacher:.1f}s), distill {distill_metrics} ({t_distill:.1f}s)")
    print(f"T13 teacher (Heun)      {s_t}")
    print(f"T13 student z*sigma_max {s_s}")
    print(f"T13 student z (CP init) {s_u}  [diagnostic]")
    print(f"T13 MMD^2 h={MMD_BANDWIDTH}: teacher/teacher' {mmd_tt:.2e}, student/teacher {mmd_st:.2e} "
          f"(bound {bound:.2e}), CP-init/teacher {mmd_ut:.2e} [diagnostic]; wall {wall:.1f}s")

    for m in ("plus", "minus"):
        assert abs(s_s[f"mass_{m}"] - 0.5) <= 0.1, s_s
        assert s_s[f"mean_err_{m}"] < 0.05, s_s
    assert mmd_st <= bound, (mmd_st, mmd_tt)
