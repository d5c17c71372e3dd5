"""Consistency distillation: rti_consistency.md §4.2 T8-T12, the two losses and the student checkpoint."""

import copy

import pytest
import torch
from fast_policy_testing import assert_boundary_condition, obs_batch, tiny_student

from policies.consistency import edm
from policies.checkpoint import load_checkpoint, save_checkpoint
from policies.consistency.config import ConsistencyConfig
from robotstack.train.distill import DistillConfig, ctm_loss, rl100_same_noise_loss, update_target


def test_t8_boundary_condition():
    student, _ = tiny_student("ctm")
    cc = student.config.consistency
    assert_boundary_condition(student)
    s = edm.karras_sigmas(80, cc.sigma_min, cc.sigma_max)
    cs = edm.c_skip(s, cc.sigma_min, cc.sigma_data)
    assert bool((cs[:-1] < cs[1:]).all())  # decreasing in sigma (grid is descending)
    assert float(edm.c_out(torch.tensor(cc.sigma_min), cc.sigma_min, cc.sigma_data)) == 0.0
    assert float(edm.c_skip(torch.tensor(cc.sigma_min), cc.sigma_min, cc.sigma_data)) == 1.0


def test_t9_karras_grid():
    s = edm.karras_sigmas(80, 0.02, 80.0, 7.0)
    assert float(s[0]) == 80.0 and float(s[-1]) == 0.02 and len(s) == 80
    assert bool((s[1:] < s[:-1]).all())
    torch.testing.assert_close(edm.sigma_to_bin(s, 80, 0.02, 80.0), torch.arange(80, dtype=torch.float64))


def test_t10_heun_on_analytic_ode():
    mu, sd = 0.3, 0.5
    s = edm.karras_sigmas(80, 0.02, 80.0)

    def denoise(x, sigma):
        sig = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1)
        return mu + sd ** 2 / (sd ** 2 + sig ** 2) * (x - mu)

    x = torch.randn(4, 8, 2, dtype=torch.float64) * 10
    worst = 0.0
    for i in range(79):
        a, b = s[i].reshape(1).expand(4), s[i + 1].reshape(1).expand(4)
        got = edm.heun_step(denoise, x, a, b)
        exact = mu + (x - mu) * ((sd ** 2 + s[i + 1] ** 2) / (sd ** 2 + s[i] ** 2)).sqrt()
        worst = max(worst, float((got - exact).abs().max() / (x - mu).abs().max()))
        x = exact
    assert worst < 1e-3


def test_t11_target_network_and_gradients():
    student, teacher = tiny_student("ctm")
    student.denoiser.train()
    target = copy.deepcopy(student).requires_grad_(False)
    teacher.requires_grad_(False)
    cfg = DistillConfig(teacher="x")
    x0 = torch.rand(4, 8, 4) * 2 - 1
    cond = teacher.encode_obs(obs_batch(teacher.config, 4), deterministic=True).cond
    teacher_d = edm.EpsTeacher(teacher.denoiser, teacher.schedule.alphas_cumprod)
    opt = torch.optim.SGD(student.denoiser.parameters(), lr=0.1)
    loss, m = ctm_loss(student, target, teacher_d, x0, cond, cfg, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and m["loss_ctm"] >= 0 and m["loss_dsm"] >= 0
    loss.backward()
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in student.denoiser.parameters())
    opt.step()
    before = [p.clone() for p in target.parameters()]
    update_target(target, student, 0.0)
    for p_t, p in zip(target.parameters(), student.parameters()):
        torch.testing.assert_close(p_t, p, rtol=0, atol=0)
    with torch.no_grad():
        for p in student.denoiser.parameters():
            p.add_(1.0)
    snap = [p.clone() for p in target.parameters()]
    update_target(target, student, 0.95)
    for p_t, old, p in zip(target.parameters(), snap, student.parameters()):
        torch.testing.assert_close(p_t, 0.95 * old + 0.05 * p)
    assert len(before) == len(snap)


def test_t12_pseudo_huber():
    x = torch.randn(5, 8, 4)
    assert torch.equal(edm.pseudo_huber(x, x), torch.zeros(5))
    c = 0.00054 * (32 ** 0.5)
    e = torch.full((1, 8, 4), 1e-5)
    sq = float((e ** 2).sum())
    assert float(edm.pseudo_huber(e, torch.zeros_like(e))) == pytest.approx(sq / (2 * c), rel=1e-2)
    big = torch.full((1, 8, 4), 1.0)
    assert float(edm.pseudo_huber(big, torch.zeros_like(big))) == pytest.approx(32 ** 0.5 - c, rel=1e-4)


def test_rl100_same_noise_loss_trains_towards_the_teacher():
    student, teacher = tiny_student("rl100")
    student.denoiser.train()
    with torch.no_grad():
        cond = teacher.encode_obs(obs_batch(teacher.config, 16), deterministic=True).cond
    opt = torch.optim.Adam(student.denoiser.parameters(), lr=1e-3)
    losses = []
    for i in range(60):
        loss, _ = rl100_same_noise_loss(student, teacher, cond, 10, torch.Generator().manual_seed(i % 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("method", ["ctm", "rl100"])
def test_sampling_shapes_chaining_and_checkpoint_round_trip(method, tmp_path):
    student, _ = tiny_student(method)
    obs = obs_batch(student.config, 2)
    for n in (1, 3):
        out = student.predict_action(obs, steps=n, generator=torch.Generator().manual_seed(0))
        assert out.action.shape == (2, 4, 4) and out.chunk.shape == (2, 8, 4)
    assert len(student.chain_points(3)) == 3
    save_checkpoint(tmp_path / "s", student, extra={"task": "push"})
    back = load_checkpoint(tmp_path / "s", weights="auto")
    a = student.predict_action(obs, steps=3, generator=torch.Generator().manual_seed(1)).chunk
    b = load_checkpoint(tmp_path / "s").predict_action(obs, steps=3, generator=torch.Generator().manual_seed(1)).chunk
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert type(back) is type(student)
    assert not list(tmp_path.glob("s/*.pt")) and not list(tmp_path.glob("s/*.pkl"))


def test_config_validation_names_the_key():
    from robotstack.core.errors import ConfigError

    with pytest.raises(ConfigError, match="consistency.method"):
        ConsistencyConfig(method="cd")
    from robotstack.core.config import load_config

    with pytest.raises(ConfigError, match="target_ema"):
        load_config(DistillConfig, None, ["loss.target_ema=1.0"])
    from robotstack.train.distill import build_teacher

    with pytest.raises(ConfigError, match="--checkpoint"):
        build_teacher(DistillConfig())
