"""EDM / Karras pieces for consistency distillation (rti_consistency.md §2.1-2.2), as pure functions.

Glossary: B batch, T horizon, Da action dim, N Karras bins, sigma noise level (VE: x_sigma = x_0 + sigma * z).

- `karras_sigmas`: sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, bin 0 = sigma_max.
- boundary scalings (CP-C `calc_out`, CM-C `get_scalings_for_boundary_condition`):
      c_skip = sd^2 / ((s - smin)^2 + sd^2),  c_out = (s - smin) sd / sqrt(s^2 + sd^2),
      c_in = 1 / sqrt(s^2 + sd^2),            c_noise = 1000 * 0.25 * ln(s)
  so c_skip(smin) = 1 and c_out(smin) = 0: f(x, smin) = x exactly (the consistency boundary condition).
- `heun_step`: one 2nd-order step of the PF-ODE dx/dsigma = (x - D(x, sigma)) / sigma (EDM form).
- `pseudo_huber`: d(x, y) = sqrt(||x - y||^2 + c^2) - c over the flattened chunk, c = 0.00054 sqrt(T*Da)
  (CP-P Eq. 4 / iCT). We use this vector form, not CP-C's elementwise variant (documented choice).
- `EpsTeacher`: turns a trained DDPM epsilon-model (VP, discrete t) into an EDM denoiser D(x, sigma):
      abar(sigma) = 1 / (1 + sigma^2),  x_vp = sqrt(abar) x,  t = the train step whose sigma_t is nearest in
      log-space,  D = clip(x - sigma * eps(x_vp, t, cond), -1, 1)
  (VP <-> VE: x_vp = sqrt(abar) (x_0 + sigma z) with sigma = sqrt((1 - abar) / abar)).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B,T,Da), sigma (B,)) -> x0 (B,T,Da)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """(N,) float64 descending grid; bin 0 = sigma_max, bin N-1 = sigma_min."""
    if n < 2 or not 0 < sigma_min < sigma_max:
        raise ValueError(f"karras_sigmas: need n >= 2 and 0 < sigma_min < sigma_max, got {n}, {sigma_min}, {sigma_max}")
    i = torch.arange(n, dtype=torch.float64) / (n - 1)
    s = (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    s[0], s[-1] = sigma_max, sigma_min  # exact end points despite pow rounding
    return s


def sigma_to_bin(sigma: torch.Tensor, n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Inverse of karras_sigmas (fractional bin index)."""
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (sigma.to(torch.float64) ** (1 / rho) - a) / (b - a) * (n - 1)


def _col(s: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """sigma (B,) or scalar -> (B, 1, 1) in like's dtype."""
    s = torch.as_tensor(s, dtype=like.dtype, device=like.device)
    return s.reshape(-1, 1, 1) if s.ndim else s


def c_skip(sigma, sigma_min: float, sigma_data: float):
    return sigma_data ** 2 / ((sigma - sigma_min) ** 2 + sigma_data ** 2)


def c_out(sigma, sigma_min: float, sigma_data: float):
    return (sigma - sigma_min) * sigma_data / (sigma ** 2 + sigma_data ** 2) ** 0.5


def c_in(sigma, sigma_data: float):
    return 1.0 / (sigma ** 2 + sigma_data ** 2) ** 0.5


def c_noise(sigma: torch.Tensor) -> torch.Tensor:
    return 1000.0 * 0.25 * torch.log(sigma)


def karras_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 (CP-C `get_karras_weightings`)."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def heun_step(denoise: Denoiser, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """x at sigma (B,) -> x at sigma_next (B,) with Heun's method (Euler when sigma_next == 0)."""
    s, sn = _col(sigma, x), _col(sigma_next, x)
    d = (x - denoise(x, sigma)) / s
    x_e = x + (sn - s) * d
    if bool((torch.as_tensor(sigma_next) == 0).all()):
        return x_e
    d2 = (x_e - denoise(x_e, sigma_next)) / sn
    return x + (sn - s) * 0.5 * (d + d2)


def pseudo_huber(x: torch.Tensor, y: torch.Tensor, c: float | None = None) -> torch.Tensor:
    """(B, ...) x2 -> (B,) sqrt(||x-y||^2 + c^2) - c over the flattened sample; c defaults to 0.00054 sqrt(dim)."""
    diff = (x - y).flatten(1)
    if c is None:
        c = 0.00054 * math.sqrt(diff.shape[1])
    return torch.sqrt((diff ** 2).sum(-1) + c * c) - c


def nearest_timestep(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """(B,) sigma -> (B,) long: the train step whose log sigma_t (log_sigmas (N,)) is nearest to log sigma."""
    return (torch.log(sigma.to(log_sigmas.dtype))[:, None] - log_sigmas[None, :]).abs().argmin(dim=1)


class EpsTeacher:
    """EDM denoiser D(x, sigma) from a DiffusionPolicy's epsilon-denoiser, for one fixed cond (B, Dc)."""

    def __init__(self, denoiser: torch.nn.Module, alphas_cumprod: torch.Tensor, clip: float | None = 1.0):
        self.denoiser = denoiser
        ac = alphas_cumprod.to(torch.float64)
        self.log_sigmas = torch.log(((1 - ac) / ac).sqrt())  # (N,) increasing in t
        self.clip = clip
        self.cond: torch.Tensor | None = None

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """(B,) sigma -> (B,) long: the train step with the nearest log-sigma."""
        return nearest_timestep(sigma, self.log_sigmas)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.cond is None:
            raise RuntimeError("EpsTeacher.cond is not set")
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        s = sigma.reshape(-1, 1, 1)
        x_vp = x / (1.0 + s ** 2).sqrt()
        eps = self.denoiser(x_vp, self.timestep(sigma).to(x.device), self.cond)
        x0 = x - s * eps
        return x0.clamp(-self.clip, self.clip) if self.clip else x0
