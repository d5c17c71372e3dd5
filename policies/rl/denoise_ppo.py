"""PPO over the denoising MDP (RL-100 rl100.md §2, §4.4, §5; DPPO §10) on DiffusionPolicy's Gaussian steps.

Glossary: B batch (decisions), To obs history, T horizon (predicted chunk), Ta executed actions, Da action dim,
K denoising steps, n_c chunk length (RL-100), Dc encoder-feature (cond) width.

One environment decision is a K-step sub-MDP: s^k = (x_k, t_k, cond), action x_{k+1} ~ N(mean_k, sigma~_k^2 I)
(stochastic DDIM, eta = 1, sigma~ = clip(sigma, sigma_min, sigma_max)). The chain x_K (noise) .. x_0 (chunk) and
the per-step log-probs, summed over the executed (Ta, Da) window only, are what PPO stores:

    sample_chain(policy, obs)                    -> DenoisingChain (chain (B, K+1, T, Da), log_probs (B, K), ...)
    chain_log_probs(policy, cond, chain, ts, tps) -> (B, K) log-probs of a stored chain under the current weights
    broadcast_advantage(adv (B,), K)             -> (B, K) same A at every step (RL-100) | gamma_denoise^(K-1-k) A
    clipped_surrogate(new, old, adv, eps)        -> Surrogate(loss, ratio, clip_frac, approx_kl)
    ppo_update(policy, opt, chain, adv, cfg)     -> stats (one optimiser step per denoising step, or one batched)

Sampling is DiffusionPolicy.sample_with_trajectory (no second sampler here). Behaviour and current log-probs
both come from the policy's denoise_step_distribution + step_log_prob on the same inputs, so the first ratio
is 1 bit for bit (rl100.md §12 pitfall 1; tested with torch.equal). Features must be deterministic: the chain
stores the deterministic encoder output (VIB mean), and train-mode dropout/batch-norm in the denoiser is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import torch
from torch import nn

from robotstack.core.errors import ConfigError

from policies.common.optim import gradient_step
from policies.diffusion.config import SchedulerConfig
from policies.diffusion.noise import NoiseSchedule, clip_sigma

UPDATE_MODES = ("per_step", "batched")
LOGPROB_MODES = ("sum", "mean")


# ---------------------------------------------------------------------------------------------- config
@dataclasses.dataclass
class DenoisePPOConfig:
    steps: int = 10  # K: all K DDIM steps are fine-tuned (RL-100), not DPPO's last K'
    eta: float = 1.0
    # Spec §13: the paper gives no eps; the official code uses 0.25 offline (linearly decayed for 200 steps)
    # and 0.2 online. 0.2 is the default here; the offline stage passes 0.25 and owns any decay.
    clip_eps: float = 0.2
    # None = RL-100: the env-level A is broadcast unchanged to all K steps. A float = DPPO's
    # gamma_denoise^(K-1-k) factor (k = 0 is the noisiest step).
    gamma_denoise: float | None = None
    # "per_step" = the official code: zero_grad/backward/step inside the loop over k, so step k+1's ratio sees
    # the weights after step k. "batched" = one step on the sum over k (spec §12.5: acceptable, must be recorded).
    update: str = "per_step"
    max_grad_norm: float | None = 0.5
    # "sum" = RL-100: a step's log-prob sums the executed Ta x Da dims (the ratio is the product over dims).
    # "mean" = DPPO: the per-dim average, so the ratio is the geometric mean over dims (the sum's ratio to the
    # 1/(Ta*Da) power) and DPPO's clip / lr settings mean what they mean there. Stored log-probs stay sums.
    logprob: str = "sum"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"config denoise_ppo.steps (K) must be >= 1, got {self.steps}")
        if self.eta <= 0:
            raise ConfigError(f"config denoise_ppo.eta must be > 0 (eta = 0 is a Dirac with no density), "
                              f"got {self.eta}")
        if not 0 < self.clip_eps < 1:
            raise ConfigError(f"config denoise_ppo.clip_eps must be in (0, 1), got {self.clip_eps}")
        if self.gamma_denoise is not None and not 0 < self.gamma_denoise <= 1:
            raise ConfigError(f"config denoise_ppo.gamma_denoise must be in (0, 1] or null, got {self.gamma_denoise}")
        if self.update not in UPDATE_MODES:
            raise ConfigError(f"config denoise_ppo.update: {self.update!r} is not one of {UPDATE_MODES}")
        if self.logprob not in LOGPROB_MODES:
            raise ConfigError(f"config denoise_ppo.logprob: {self.logprob!r} is not one of {LOGPROB_MODES}")


def rl100_scheduler(sigma_max: float | None = 0.8, sigma_min: float = 0.01, **overrides) -> SchedulerConfig:
    """The RL-100 code's DDIM grid (leading spacing + steps_offset 1, prev clamp -> timesteps 91..1, last step to abar_0), eta 1.

    sigma_min 0.01 is the paper's value (code: 0.0067), spec §13 [inferred]. sigma_max: 0.8 single-action,
    0.1 for chunks / Meta-World (paper).
    """
    return SchedulerConfig(steps_offset=1, timestep_spacing="leading", prev_timestep_clamp=True, rl_eta=1.0, sigma_min=sigma_min,
                           sigma_max=sigma_max, **overrides)


class SigmaTable(NamedTuple):
    timesteps: list[int]  # (K,) t_k, high noise first
    prev_timesteps: list[int]  # (K,)
    sigma: torch.Tensor  # (K,) raw DDIM sigma (used in the mean)
    sigma_clipped: torch.Tensor  # (K,) sigma~ (used for sampling and log-prob)


def sigma_table(schedule: NoiseSchedule, steps: int = 10, eta: float = 1.0, sigma_min: float = 0.01,
                sigma_max: float | None = None) -> SigmaTable:
    """Per-step sigma of stochastic DDIM(K) (for logs and the golden test), from the schedule's own ddim_step."""
    ts, prev = schedule.timesteps("ddim", steps)
    t, tp = torch.tensor(ts), torch.tensor(prev)
    zeros = torch.zeros(len(ts), 1, 1)  # sigma does not depend on x_t or eps
    _, sigma, _ = schedule.ddim_step(zeros, zeros, t, tp, eta)
    return SigmaTable(ts, prev, sigma.flatten(), clip_sigma(sigma, sigma_min, sigma_max).flatten())


# ---------------------------------------------------------------------------------------------- masks
def executed_mask(horizon: int, action_dim: int, start: int, n_action_steps: int) -> torch.Tensor:
    """(T, Da) bool, True on chunk[start : start+Ta] (the actions the env executes; RL-100 and DPPO both drop the
    predicted-but-unexecuted steps from the ratio). Chunk mode with the whole chunk executed: start 0, Ta = T."""
    if start < 0 or n_action_steps < 1 or start + n_action_steps > horizon:
        raise ValueError(f"executed window [{start}, {start + n_action_steps}) does not fit horizon T={horizon}")
    mask = torch.zeros(horizon, action_dim, dtype=torch.bool)
    mask[start:start + n_action_steps] = True
    return mask


def policy_executed_mask(policy: nn.Module) -> torch.Tensor:
    c = policy.config
    return executed_mask(c.horizon, c.action_dim, c.action_start, c.n_action_steps)


# ---------------------------------------------------------------------------------------------- log-probs
class DenoisingChain(NamedTuple):
    chain: torch.Tensor  # (B, K+1, T, Da) normalized x_K (noise) ... x_0 (sampled chunk)
    log_probs: torch.Tensor  # (B, K) behaviour log pi(x_{k+1} | x_k), summed over the mask
    timesteps: torch.Tensor  # (K,)
    prev_timesteps: torch.Tensor  # (K,)
    cond: torch.Tensor  # (B, Dc) deterministic encoder features the chain was sampled with (detached)
    action: torch.Tensor  # (B, Ta, Da) env units: what the env executes
    chunk: torch.Tensor  # (B, T, Da) env units


def _check_rl_ready(policy: nn.Module, mask: torch.Tensor) -> None:
    sc = policy.config.scheduler
    if sc.sigma_min <= 0:
        raise ConfigError(f"config scheduler.sigma_min must be > 0 for PPO log-probs (sigma 0 has no density), "
                          f"got {sc.sigma_min}")
    c = policy.config
    if tuple(mask.shape) != (c.horizon, c.action_dim) or mask.dtype != torch.bool or not bool(mask.any()):
        raise ValueError(f"mask must be a non-empty bool (T, Da) = ({c.horizon}, {c.action_dim}) tensor, "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    # Train-mode dropout / batch-norm would make the ratio != 1 before any update (rl100.md §12 pitfall 1).
    live = [name for name, m in policy.denoiser.named_modules()
            if m.training and (isinstance(m, nn.modules.batchnorm._BatchNorm)
                               or (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0))]
    if live:
        raise ValueError(f"denoiser modules {live} are stochastic in train mode; call policy.eval() for RL")


def chain_step_log_prob(policy: nn.Module, cond: torch.Tensor, chain: torch.Tensor, timesteps: torch.Tensor,
                        prev_timesteps: torch.Tensor, k: int, mask: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """log pi_theta(chain[:, k+1] | chain[:, k], cond) summed over mask (T, Da) -> (B,), with grad."""
    g = policy.denoise_step_distribution(chain[:, k], timesteps[k], prev_timesteps[k], cond, kind="ddim",
                                         eta=eta, clip=True)
    lp = policy.step_log_prob(chain[:, k + 1], g.mean, g.sigma, reduce="none")  # (B, T, Da)
    return lp[:, mask.to(lp.device)].sum(-1)


def chain_log_probs(policy: nn.Module, cond: torch.Tensor, chain: torch.Tensor, timesteps: torch.Tensor,
                    prev_timesteps: torch.Tensor, mask: torch.Tensor | None = None, eta: float = 1.0) -> torch.Tensor:
    """(B, K) log-probs of every stored transition under the current weights (the PPO numerator).

    cond: the stored (frozen-encoder) features, or re-encoded ones with `encode_obs(obs, deterministic=True)`
    when the encoder is trained too (online stage).
    """
    mask = policy_executed_mask(policy) if mask is None else mask
    return torch.stack([chain_step_log_prob(policy, cond, chain, timesteps, prev_timesteps, k, mask, eta)
                        for k in range(chain.shape[1] - 1)], 1)


def deterministic_cond(policy: nn.Module, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """obs (B, To, ...) -> cond (B, Dc) with the VIB mean whatever the train/eval mode, with grad: the features to
    use when the encoder is trained during RL (online stage). A sampled VIB latent here would make the first
    ratio != 1 (the official online code's force_stochastic_online; rl100.md §12 pitfall 1)."""
    return policy.encode_obs(obs, deterministic=True).cond


@torch.no_grad()
def sample_chain(policy: nn.Module, obs: Mapping[str, torch.Tensor] | None, steps: int = 10, eta: float = 1.0,
                 mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 cond: torch.Tensor | None = None) -> DenoisingChain:
    """obs (B, To, ...) env units -> DenoisingChain of stochastic DDIM(K) with sigma clipped to the policy's
    scheduler [sigma_min, sigma_max]; log_probs (B, K) summed over `mask` (default: the executed Ta window).

    cond (B, Dc) instead of obs: features already encoded by the (frozen) encoder, e.g. the offline stage's
    cache, so an image policy does not re-run its CNN on every PPO batch (same chain for the same generator)."""
    default = policy_executed_mask(policy)
    mask = default if mask is None else mask
    _check_rl_ready(policy, mask)
    tr = policy.sample_with_trajectory(obs, steps=steps, generator=generator, eta=eta, sampler="ddim", cond=cond)
    log_probs = tr.log_probs  # summed over the policy's executed window by the same step_log_prob
    if not torch.equal(mask, default):  # another window (e.g. the whole chunk): recompute over it
        log_probs = chain_log_probs(policy, tr.cond, tr.chain, tr.timesteps, tr.prev_timesteps, mask, eta)
    return DenoisingChain(tr.chain, log_probs, tr.timesteps, tr.prev_timesteps, tr.cond, tr.action, tr.chunk)


# ---------------------------------------------------------------------------------------------- objective
def normalize_advantage(adv: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B,) -> (B,) batch-normalised (A - mean) / std, as both the offline (IQL A) and online (GAE) codes do."""
    if adv.numel() < 2:
        return adv - adv.mean()
    return (adv - adv.mean()) / (adv.std() + eps)


def broadcast_advantage(adv: torch.Tensor, steps: int, gamma_denoise: float | None = None) -> torch.Tensor:
    """Env-level A (B,) -> per-denoising-step A (B, K). RL-100: the same A at every step (no denoising
    discount). DPPO: A * gamma_denoise^(K-1-k), k = 0 the noisiest step, so the final step gets A unscaled."""
    out = adv.detach().reshape(-1, 1).expand(-1, steps)
    if gamma_denoise is None:
        return out
    k = torch.arange(steps, dtype=adv.dtype, device=adv.device)
    return out * gamma_denoise ** (steps - 1 - k)


class Surrogate(NamedTuple):
    loss: torch.Tensor  # scalar: -sum_k mean_B min(r A, clip(r) A)  (L_RL = -J, J sums over the K steps)
    ratio: torch.Tensor  # (B, K) detached
    clip_frac: torch.Tensor  # scalar: share of (decision, step) pairs whose ratio left [1-eps, 1+eps]
    approx_kl: torch.Tensor  # scalar: mean((r - 1) - log r), the k3 estimator


def clipped_surrogate(new_log_probs: torch.Tensor, old_log_probs: torch.Tensor, adv: torch.Tensor,
                      clip_eps: float) -> Surrogate:
    """new/old log-probs (B, K), adv (B, K) -> the PPO clipped surrogate summed over K, averaged over B.

    Gradient is zero where the clip binds in the direction of A: A > 0 and r > 1+eps, or A < 0 and r < 1-eps.
    """
    if new_log_probs.shape != old_log_probs.shape or adv.shape != new_log_probs.shape:
        raise ValueError(f"shapes differ: new {tuple(new_log_probs.shape)}, old {tuple(old_log_probs.shape)}, "
                         f"adv {tuple(adv.shape)}; expected all (B, K)")
    log_ratio = new_log_probs - old_log_probs.detach()
    ratio = log_ratio.exp()
    adv = adv.detach()
    obj = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)
    with torch.no_grad():
        clip_frac = ((ratio - 1.0).abs() > clip_eps).float().mean()
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
    return Surrogate(-obj.mean(0).sum(), ratio.detach(), clip_frac, approx_kl)


def ppo_update(policy: nn.Module, optimizer: torch.optim.Optimizer, batch: DenoisingChain, adv: torch.Tensor,
               cfg: DenoisePPOConfig, mask: torch.Tensor | None = None, cond: torch.Tensor | None = None,
               params: Iterable[nn.Parameter] | None = None) -> dict[str, float]:
    """One PPO pass over a (mini)batch of stored chains. adv (B,) env-level (already normalised by the caller).

    cond defaults to the stored features (frozen encoder); params (for grad clipping) default to the
    optimiser's. Returns mean loss / clip_frac / approx_kl / ratio stats over the K steps.
    """
    mask = policy_executed_mask(policy) if mask is None else mask
    cond = batch.cond if cond is None else cond
    params = [p for grp in optimizer.param_groups for p in grp["params"]] if params is None else list(params)
    k_steps = batch.log_probs.shape[1]
    adv_k = broadcast_advantage(adv, k_steps, cfg.gamma_denoise)
    scale = 1.0 / float(mask.sum()) if cfg.logprob == "mean" else 1.0  # log-prob sum -> per-dim mean
    outs: list[Surrogate] = []
    if cfg.update == "batched":
        new = chain_log_probs(policy, cond, batch.chain, batch.timesteps, batch.prev_timesteps, mask, cfg.eta)
        outs.append(clipped_surrogate(new * scale, batch.log_probs * scale, adv_k, cfg.clip_eps))
        gradient_step(optimizer, outs[-1].loss, params, cfg.max_grad_norm)
    else:
        for k in range(k_steps):
            new = chain_step_log_prob(policy, cond, batch.chain, batch.timesteps, batch.prev_timesteps, k, mask,
                                      cfg.eta)
            outs.append(clipped_surrogate(new[:, None] * scale, batch.log_probs[:, k:k + 1] * scale,
                                          adv_k[:, k:k + 1], cfg.clip_eps))
            gradient_step(optimizer, outs[-1].loss, params, cfg.max_grad_norm)
    ratios = torch.cat([o.ratio for o in outs], 1)
    return {"loss": float(sum(float(o.loss.detach()) for o in outs)),
            "clip_frac": float(torch.stack([o.clip_frac for o in outs]).mean()),
            "approx_kl": float(torch.stack([o.approx_kl for o in outs]).mean()),
            "ratio_mean": float(ratios.mean()), "ratio_max_dev": float((ratios - 1).abs().max())}
