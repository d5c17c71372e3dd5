"""Issue 10 item 5: with parameterization "teacher_eps" the warm-started ctm student IS the teacher's denoiser.

The teacher's x0 prediction at DDPM step t from a variance-exploding sample x (x_vp = sqrt(abar_t) x):
    x0_hat = (x_vp - sqrt(1 - abar_t) eps(x_vp, t, cond)) / sqrt(abar_t)
is computed here from the teacher's own modules, independently of the student's code path.
"""

import copy
import dataclasses

import pytest
import torch
from fast_policy_testing import assert_boundary_condition, obs_batch, tiny_student

from policies.consistency import edm
from policies.consistency.config import ConsistencyConfig, ConsistencyPolicyConfig
from policies.consistency.model import ConsistencyPolicy
from robotstack.core.errors import ConfigError
from robotstack.train.distill import DistillConfig, ctm_loss, update_target


def _teacher_x0(teacher, x_vp, t, cond):
    a = teacher.schedule.alphas_cumprod[t].reshape(-1, 1, 1)
    eps = teacher.denoiser(x_vp, t, cond)
    return (x_vp - (1 - a).sqrt() * eps) / a.sqrt()


def test_teacher_eps_student_at_init_equals_teacher_x0_prediction():
    student, teacher = tiny_student("ctm", parameterization="teacher_eps", perturb=False)
    cc = student.config.consistency
    b = 5
    cond = student.encode_obs(obs_batch(student.config, b))
    ac = teacher.schedule.alphas_cumprod
    smin = torch.full((b,), cc.sigma_min)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for step in (0, 3, 20, 50, 80, 98):  # sigma exactly at a training step: x_vp = sqrt(abar_t) x
            t = torch.full((b,), step)
            sigma = ((1 - ac[t]) / ac[t]).sqrt()
            x = torch.randn(b, 8, 4, generator=g) * (1 + sigma.reshape(-1, 1, 1))
            want = _teacher_x0(teacher, x * ac[t].sqrt().reshape(-1, 1, 1), t, cond)
            got = student.ctm_jump(x, sigma, smin, cond)  # the one-step output G(x, sigma, sigma_min)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * (1 + float(sigma[0])))
        # off-grid sigmas (the Karras bins distillation uses): the teacher read as an EDM denoiser, unclipped
        teacher_d = edm.EpsTeacher(teacher.denoiser, ac, clip=None)
        teacher_d.cond = cond
        for sig in (cc.sigma_max, 10.0, 1.3, 0.2, 0.05):
            sigma = torch.full((b,), sig)
            x = torch.randn(b, 8, 4, generator=g) * (1 + sig)
            torch.testing.assert_close(student.ctm_jump(x, sigma, smin, cond), teacher_d(x, sigma),
                                       rtol=1e-5, atol=1e-5 * (1 + sig))
        # the whole one-step sampler = the teacher's clipped x0 from z * sigma_max
        z = torch.randn(b, 8, 4, generator=g)
        sm = torch.full((b,), cc.sigma_max)
        torch.testing.assert_close(student.sample_normalized(cond, [z]),
                                   teacher_d(z * cc.sigma_max, sm).clamp(-1, 1), rtol=1e-5, atol=1e-5)


def test_edm_student_at_init_is_not_the_teacher():
    """Documents what the option fixes: the EDM-read warm start is far from the teacher's x0 prediction."""
    student, teacher = tiny_student("ctm", parameterization="edm", perturb=False)
    cond = student.encode_obs(obs_batch(student.config, 5))
    teacher_d = edm.EpsTeacher(teacher.denoiser, teacher.schedule.alphas_cumprod, clip=None)
    teacher_d.cond = cond
    sigma = torch.full((5,), 1.3)
    x = torch.randn(5, 8, 4, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        gap = (student.ctm_jump(x, sigma, torch.full((5,), 0.02), cond) - teacher_d(x, sigma)).abs().max()
    assert float(gap) > 0.1


def test_teacher_eps_boundary_condition_for_any_weights():
    student, _ = tiny_student("ctm", parameterization="teacher_eps")  # perturbed weights
    x, t, cond = assert_boundary_condition(student)
    smin = torch.full((3,), student.config.consistency.sigma_min)
    with torch.no_grad():  # and G(x, t, s) moves toward the x0 estimate as s decreases (not a constant identity)
        assert float((student.ctm_jump(x, t, smin, cond) - x).abs().max()) > 1e-3


def test_teacher_eps_config_checks():
    with pytest.raises(ConfigError, match="parameterization"):
        ConsistencyConfig(method="rl100", parameterization="teacher_eps")
    with pytest.raises(ConfigError, match="parameterization"):
        ConsistencyConfig(parameterization="vp")
    _, teacher = tiny_student("ctm")
    base = teacher.config
    linear = dataclasses.replace(base, scheduler=dataclasses.replace(base.scheduler, beta_schedule="linear"))
    with pytest.raises(ConfigError, match=r"sigma_max.*1\.32"):  # linear-100 tops out at sigma_t = 1.32
        ConsistencyPolicy(ConsistencyPolicyConfig(base=linear, consistency=ConsistencyConfig(
            parameterization="teacher_eps")))
    ConsistencyPolicy(ConsistencyPolicyConfig(base=linear, consistency=ConsistencyConfig(
        parameterization="teacher_eps", sigma_max=1.3)))


def test_ctm_loss_falls_from_the_teacher_initialized_student():
    student, teacher = tiny_student("ctm", parameterization="teacher_eps", perturb=False)
    student.denoiser.train()
    target = copy.deepcopy(student).requires_grad_(False)
    cfg = DistillConfig(teacher="x", policy=student.config.consistency)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(32, 8, 4, generator=g) * 2 - 1).clamp(-0.9, 0.9)
    with torch.no_grad():
        cond = teacher.encode_obs(obs_batch(teacher.config, 32), deterministic=True).cond
    teacher_d = edm.EpsTeacher(teacher.denoiser, teacher.schedule.alphas_cumprod)
    opt = torch.optim.Adam(student.denoiser.parameters(), lr=1e-3)
    losses = []
    for i in range(80):
        loss, _ = ctm_loss(student, target, teacher_d, x0, cond, cfg, torch.Generator().manual_seed(i % 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        update_target(target, student, 0.0)
        losses.append(float(loss.detach()))
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4]), (losses[:4], losses[-4:])


def test_teacher_eps_student_checkpoint_and_onnx_export(tmp_path):
    """The option travels in the checkpoint's config and the exported graph is the torch student (cm1 and cm3)."""
    import numpy as np

    import sim
    from policies.checkpoint import load_checkpoint, save_checkpoint
    from robotstack.export.onnx_export import export_artifact
    from robotstack.runtime.artifact import load_artifact

    student, _ = tiny_student("ctm", parameterization="teacher_eps")
    save_checkpoint(tmp_path / "ck", student, extra={"task": "reach"})
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.config.consistency.parameterization == "teacher_eps"
    env = sim.make("reach")
    try:
        spec = env.unwrapped.task_spec()
    finally:
        env.close()
    rng = np.random.default_rng(0)
    for sampler, n in (("cm1", 1), ("cm3", 3)):
        m = export_artifact(tmp_path / "ck", sampler, tmp_path / sampler, latency_runs=5, parity_trials=2,
                            task_spec=spec)
        assert m["parity"]["ok"] and m["parity"]["max_abs_err"] <= 1e-4, m["parity"]
        art = load_artifact(tmp_path / sampler)
        h = {k: rng.uniform(-2, 2, shape).astype(np.float32) for k, (shape, _) in art.obs_spec.items()}
        noise = rng.standard_normal((1, n, 8, 4)).astype(np.float32)
        got = art.run_raw("policy", {**{k: v[None] for k, v in h.items()}, "noise": noise})
        ref = loaded.predict_action({k: torch.from_numpy(v[None]) for k, v in h.items()}, steps=n,
                                    noises=[torch.from_numpy(noise[:, i]) for i in range(n)])
        np.testing.assert_allclose(got["chunk"], ref.chunk.numpy(), atol=1e-4, rtol=0)
