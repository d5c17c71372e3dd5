"""Helpers for tests/distill and tests/export (unique basename: tests/ has no __init__.py files)."""

import numpy as np
import torch

torch.set_num_threads(1)


def tiny_teacher(seed: int = 0):
    from policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig

    torch.manual_seed(seed)
    policy = DiffusionPolicy(DiffusionPolicyConfig.example())
    rng = np.random.default_rng(seed)
    policy.fit_normalizer({k: rng.uniform(-2.0, 2.0, size=(256, *policy.normalizer.stats[k].shape))
                           for k in policy.normalizer.keys()})
    return policy.eval()


def tiny_student(method: str = "ctm", seed: int = 0, parameterization: str = "edm", perturb: bool = True):
    from policies.consistency.config import ConsistencyConfig, ConsistencyPolicyConfig
    from policies.consistency.model import ConsistencyPolicy, warm_start_from

    teacher = tiny_teacher(seed)
    torch.manual_seed(seed + 1)
    cc = ConsistencyConfig(method=method, parameterization=parameterization)
    student = ConsistencyPolicy(ConsistencyPolicyConfig(base=teacher.config, consistency=cc))
    warm_start_from(student, teacher)
    if not perturb:  # the student exactly as distillation starts it
        return student.eval(), teacher
    # perturb so the zero-initialized s-columns and copied weights are not a special case
    with torch.no_grad():
        for p in student.denoiser.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return student.eval(), teacher


def obs_batch(config, batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand((batch, config.n_obs_steps, *s), generator=g) * 4 - 2 for k, s in config.obs_shapes.items()}


def assert_boundary_condition(student, t=(0.5, 3.0, 40.0)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """G(x, sigma_min, sigma_min) = x and G(x, t, t) = x for a ctm student; returns (x, t, cond) for more checks."""
    cc = student.config.consistency
    cond = student.encode_obs(obs_batch(student.config, len(t)))
    x = torch.randn(len(t), 8, 4)
    smin = torch.full((len(t),), cc.sigma_min)
    t = torch.tensor(t)
    with torch.no_grad():
        torch.testing.assert_close(student.ctm_jump(x, smin, smin, cond), x, atol=1e-6, rtol=0)
        torch.testing.assert_close(student.ctm_jump(x, t, t, cond), x, atol=1e-6, rtol=0)
    return x, t, cond
