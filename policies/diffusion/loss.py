"""Stage-1 imitation loss of the diffusion policy, as named pure functions (rl100.md §3).

Glossary: B batch, To obs history, T horizon, Da action dim, Ds low-dim state width, N train timesteps.

    L = mean ||eps - eps_theta(x_t, t, c)||^2  +  beta_recon * L_recon  +  beta_kl * KL
with L_recon = ||q_hat - q||^2 (sum over dims, mean over B and To; q = normalized low-dim obs) and
KL summed over the latent dims and To, mean over B. Terms are present only when the encoder has the heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the model imports this module; type-only import avoids the cycle
    from policies.diffusion.model import DiffusionPolicy


def epsilon_loss(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """(B, T, Da) x2 -> scalar mean squared error (diffusion_policy's loss)."""
    return torch.mean((eps_pred - eps) ** 2)


def recon_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, To, Ds) x2 -> scalar: squared L2 per step, mean over B and To."""
    return ((recon - target) ** 2).sum(-1).mean()


def kl_loss(kl: torch.Tensor) -> torch.Tensor:
    """(B,) per-sample KL -> scalar mean."""
    return kl.mean()


def compute_loss(policy: DiffusionPolicy, batch: Mapping[str, object], generator: torch.Generator | None = None,
                 beta_kl: float | None = None, beta_recon: float | None = None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """batch = {"obs": {key: (B, To, ...)}, "action": (B, T, Da)} in env units -> (loss, metrics).

    beta_kl / beta_recon override the config (KL annealing and the /10 of the RL stages live in the trainer).
    """
    cfg = policy.config
    obs, action = batch["obs"], batch["action"]
    b = policy.check_obs(obs)
    want = (b, cfg.horizon, cfg.action_dim)
    if tuple(action.shape) != want:
        raise ValueError(f"batch['action'] has shape {tuple(action.shape)}, expected {want} (B, T, Da)")
    x0 = policy.normalizer.normalize("action", action.to(torch.float32))
    enc = policy.encode_obs(obs)
    sched = policy.schedule
    t = torch.randint(0, sched.num_train_timesteps, (b,), generator=generator).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x_t = sched.add_noise(x0, eps, t)
    eps_pred = policy.denoiser(x_t, t, enc.cond)

    l_eps = epsilon_loss(eps_pred, eps)
    loss = l_eps
    metrics = {"loss_eps": float(l_eps.detach())}
    if enc.kl is not None:
        l_kl = kl_loss(enc.kl)
        loss = loss + (cfg.beta_kl if beta_kl is None else beta_kl) * l_kl
        metrics["loss_kl"] = float(l_kl.detach())
    if enc.recon is not None:
        l_rec = recon_loss(enc.recon, enc.state)
        loss = loss + (cfg.beta_recon if beta_recon is None else beta_recon) * l_rec
        metrics["loss_recon"] = float(l_rec.detach())
    metrics["loss"] = float(loss.detach())
    return loss, metrics
