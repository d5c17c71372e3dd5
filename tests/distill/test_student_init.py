"""Issue 10 item 5: at initialization the warm-started student IS the teacher's denoiser.

The teacher's x0 prediction at DDPM step t from a variance-exploding sample x (x_vp = sqrt(abar_t) x):
    x0_hat = (x_vp - sqrt(1 - abar_t) eps(x_vp, t, cond)) / sqrt(abar_t)
is computed here from the teacher's own modules, independently of the student's code path.
"""

import torch
from fast_policy_testing import obs_batch, tiny_student

from policies.consistency import edm


def _teacher_x0(teacher, x_vp, t, cond):
    a = teacher.schedule.alphas_cumprod[t].reshape(-1, 1, 1)
    eps = teacher.denoiser(x_vp, t, cond)
    return (x_vp - (1 - a).sqrt() * eps) / a.sqrt()


def test_ctm_student_at_init_equals_teacher_x0_prediction():
    student, teacher = tiny_student("ctm", perturb=False)
    cc = student.config.consistency
    b = 5
    cond = student.encode_obs(obs_batch(student.config, b))
    ac = teacher.schedule.alphas_cumprod
    smin = torch.full((b,), cc.sigma_min)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for step in (0, 3, 20, 50, 80):  # sigma exactly at a training step: x_vp = sqrt(abar_t) x
            t = torch.full((b,), step)
            sigma = ((1 - ac[t]) / ac[t]).sqrt()
            x = torch.randn(b, 8, 4, generator=g) * (1 + sigma.reshape(-1, 1, 1))
            want = _teacher_x0(teacher, x * ac[t].sqrt().reshape(-1, 1, 1), t, cond)
            got = student.ctm_jump(x, sigma, smin, cond)  # the one-step output G(x, sigma, sigma_min)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        # off-grid sigmas (the Karras bins the sampler and distillation use): the teacher read as an EDM
        # denoiser (nearest training step, x_vp = x / sqrt(1 + sigma^2)), unclipped
        teacher_d = edm.EpsTeacher(teacher.denoiser, ac, clip=None)
        teacher_d.cond = cond
        for sig in (cc.sigma_max, 10.0, 1.3, 0.2, 0.05):
            sigma = torch.full((b,), sig)
            x = torch.randn(b, 8, 4, generator=g) * (1 + sig)
            torch.testing.assert_close(student.ctm_jump(x, sigma, smin, cond), teacher_d(x, sigma),
                                       rtol=1e-4, atol=1e-4 * (1 + sig))
        # boundary condition still exact
        x = torch.randn(b, 8, 4, generator=g)
        torch.testing.assert_close(student.ctm_jump(x, smin, smin, cond), x, rtol=0, atol=1e-6)
        # and the whole one-step sampler = the teacher's clipped x0 from z * sigma_max
        z = torch.randn(b, 8, 4, generator=g)
        sm = torch.full((b,), cc.sigma_max)
        torch.testing.assert_close(student.sample_normalized(cond, [z]),
                                   teacher_d(z * cc.sigma_max, sm).clamp(-1, 1), rtol=1e-4, atol=1e-4)


def test_rl100_student_at_init_equals_teacher_x0_prediction():
    student, teacher = tiny_student("rl100", perturb=False)
    b = 4
    cond = student.encode_obs(obs_batch(student.config, b))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for step in (9, 39, 69, 99):
            t = torch.full((b,), step)
            x_vp = torch.randn(b, 8, 4, generator=g)
            torch.testing.assert_close(student.rl100_jump(x_vp, t, cond), _teacher_x0(teacher, x_vp, t, cond),
                                       rtol=1e-4, atol=1e-4)
        # the one-step sample = the clipped x0 of the teacher's first DDIM step from the same noise
        z = torch.randn(b, 8, 4, generator=g)
        t0 = torch.full((b,), student.chain_points(1)[0])
        torch.testing.assert_close(student.sample_normalized(cond, [z]),
                                   _teacher_x0(teacher, z, t0, cond).clamp(-1, 1), rtol=1e-5, atol=1e-5)
