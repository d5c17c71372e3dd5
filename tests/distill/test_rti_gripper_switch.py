"""Issue 10 item 6a: RTI must be able to switch the gripper when the policy's gripper output flips.

The policy is a DiffusionPolicy whose denoiser is the Bayes-optimal epsilon for known data (a real, exact
denoiser, as in T6): continuous dims ~ N(0, s^2), the gripper dim a two-mode mixture at +-m with weight w_plus
(the "phase" of the episode). Mid-episode w_plus jumps from 0.03 to 0.97: the policy's mean gripper output
flips from open to close, and a full DDIM sample flips with it. RTI starts each decision from its previous
(shifted) chunk at K' (noise std 0.06 / 0.08 / 0.11 at K' = 2 / 3 / 5):
- clip mode, factor 1 (the old benchmark setting) feeds a clean -1 gripper; the mixture posterior at x = -1
  gives the +1 mode a relative weight ~exp(-2 sqrt(abar) / (1 - abar)) < e^-170: the gripper can never switch
  (frozen by construction). Clip with factor 10 on a policy trained at +-1 freezes the same way (the denoiser
  snaps +-0.1 back to the nearest mode): measured, never switches at K' = 2..5, nor from level 10 ([10, 5, 0]);
  from level 20 ([20, 10, 0], 3 calls as jumps, the export default) it switches right after the flip.
- scale mode (the gripper trained at +-1/10, the paper's choice) puts the modes 0.2 apart, inside the noise the
  model expects, so the posterior follows the weights: measured, RTI switches 0-5 decisions after the flip at
  K' = 3 or with steps [3, 1, 0] or [5, 2, 0] stepped as jumps (3 NFE each); at K' = 2 only after ~20 decisions.
"""

import dataclasses

import pytest
import torch
from torch import nn
from fast_policy_testing import obs_batch, tiny_teacher

from policies.diffusion.rti import RTIConfig, RTISampler, scale_gripper_normalizer

GRIP = 3


class MixtureEps(nn.Module):
    """Optimal eps(x_t, t) for x0: dims != GRIP ~ N(0, s^2); GRIP ~ w+ N(+m, s^2) + (1 - w+) N(-m, s^2)."""

    def __init__(self, abar: torch.Tensor, m: float, s: float = 0.02):
        super().__init__()
        self.abar, self.m, self.s, self.w_plus = abar, m, s, 0.5

    def forward(self, x, t, cond):
        a = self.abar[torch.as_tensor(t).long()].reshape(-1, 1, 1).expand(x.shape[0], 1, 1)
        v = a * self.s ** 2 + 1 - a  # var of x_t given a component
        k = a.sqrt() * self.s ** 2 / v  # E[x0 | x_t, comp] = mean + k (x_t - sqrt(a) mean)
        x0 = k * x
        g = x[..., GRIP:GRIP + 1]
        means = torch.tensor([self.m, -self.m])
        logw = torch.log(torch.tensor([self.w_plus, 1 - self.w_plus]))
        logits = logw - (g - a.sqrt() * means) ** 2 / (2 * v)
        r = torch.softmax(logits, dim=-1)
        g0 = (r * (means + k * (g - a.sqrt() * means))).sum(-1, keepdim=True)
        x0 = torch.cat([x0[..., :GRIP], g0, x0[..., GRIP + 1:]], dim=-1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()


def mixture_policy(factor: float):
    """factor 1: the gripper at +-1 in model space (as trained today); 10: trained with the gripper / 10."""
    p = tiny_teacher()
    scale_gripper_normalizer(p, [GRIP], factor)
    p.denoiser = MixtureEps(p.schedule.alphas_cumprod, 1.0 / factor)
    return p


def executed_gripper(config: RTIConfig, factor: float, flip_at: int = 10, decisions: int = 30, seed: int = 0):
    p = mixture_policy(factor)
    r = RTISampler(p, dataclasses.replace(config, init_sampler="ddim", init_steps=10))
    obs = obs_batch(p.config)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(decisions):
        p.denoiser.w_plus = 0.03 if i < flip_at else 0.97
        out.append(float(r(obs, generator=gen).action[0, 0, GRIP]))
    return out


def switch_after(grip: list[float], flip_at: int = 10) -> int | None:
    """Decisions after the flip until the executed gripper is +1 and stays there; None if never."""
    for i in range(flip_at, len(grip)):
        if all(g == 1.0 for g in grip[i:]):
            return i - flip_at
    return None


def test_the_policy_itself_flips():
    """Sanity: full DDIM sampling follows the weights (-1 before the flip, +1 after), for both scalings."""
    for factor in (1.0, 10.0):
        p = mixture_policy(factor)
        obs = obs_batch(p.config)
        for w, want in ((0.03, -1.0), (0.97, 1.0)):
            p.denoiser.w_plus = w
            gen = torch.Generator().manual_seed(1)
            g = [float(p.predict_action(obs, sampler="ddim", generator=gen).action[0, 0, GRIP] > 0) * 2 - 1
                 for _ in range(10)]
            assert sum(x == want for x in g) >= 8, (factor, w, g)


SWITCHING = {"k3": dict(k_start=3), "steps_3_1_0": dict(steps=(3, 1, 0)),
             "steps_5_2_0_jump": dict(steps=(5, 2, 0), step_semantics="jump")}  # bench_inference's "RTI 5-2-0"


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("steps", list(SWITCHING))
def test_rti_scale_mode_switches_the_gripper(steps, seed):
    grip = executed_gripper(RTIConfig(**SWITCHING[steps], gripper_mode="scale", factor=10.0), 10.0, seed=seed)
    assert all(g == -1.0 for g in grip[:10]), grip[:10]
    n = switch_after(grip)
    assert n is not None and n <= 6, grip


@pytest.mark.parametrize("mode,factor", [("clip", 1.0), ("clip", 10.0)])
def test_rti_clip_on_a_plus_minus_1_policy_freezes_the_gripper(mode, factor):
    """The old benchmark setting (clip, factor 1): the switching test above fails with it - the executed gripper
    never leaves -1, even at K' = 5 - which is why it is no longer the export default."""
    for k in (3, 5):
        grip = executed_gripper(RTIConfig(k_start=k, gripper_mode=mode, factor=factor), factor=1.0)
        assert switch_after(grip) is None and set(grip) == {-1.0}, grip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rti_from_level_20_switches_a_clipped_plus_minus_1_gripper(seed):
    """The export default [20, 10, 0] (3 calls, jumps): starting at noise std ~0.31 the +-1 policy's posterior
    reaches the other mode, so clip mode switches the gripper right after the flip; from level 10 this exact
    (very sharp) denoiser still freezes, which is why the default starts at 20."""
    cfg = dict(steps=(20, 10, 0), k_start=20, step_semantics="jump", gripper_mode="clip", factor=10.0)
    grip = executed_gripper(RTIConfig(**cfg), factor=1.0, seed=seed)
    assert all(g == -1.0 for g in grip[:10]) and switch_after(grip) is not None and switch_after(grip) <= 2, grip
    frozen = executed_gripper(RTIConfig(**cfg | dict(steps=(10, 5, 0), k_start=10)), factor=1.0, seed=seed)
    assert switch_after(frozen) is None, frozen


def test_auto_gripper_mode_resolves_from_the_policy():
    from policies.diffusion.rti import resolve_gripper_mode, trained_gripper_factor

    scaled, plain = mixture_policy(10.0), tiny_teacher()
    assert trained_gripper_factor(scaled, [GRIP]) == 10.0 and trained_gripper_factor(plain, [GRIP]) is None
    r = RTISampler(scaled, RTIConfig(gripper_mode="auto"))
    assert (r.config.gripper_mode, r.config.factor, r.config.gripper_dims) == ("scale", 10.0, (GRIP,))
    cfg, why = resolve_gripper_mode(plain, RTIConfig(gripper_mode="auto", gripper_dims=(GRIP,)))
    assert (cfg.gripper_mode, cfg.factor) == ("clip", 10.0) and "retrain" in why
    # auto on the switching scenario behaves as scale mode
    grip = executed_gripper(RTIConfig(k_start=3, gripper_mode="auto"), 10.0)
    assert switch_after(grip) is not None
