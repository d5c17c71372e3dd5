"""Chunked critics: Decoupled Q-chunking (DQC) with its QC / n-step / one-step variants, and ALOE-style
current-policy evaluation with advantage weights and best-of-N extraction (spec: shared/specs/dqc_aloe.md).

Glossary: B batch, K ensemble members, M policy samples per next state, N best-of-N candidates, Do flat
observation features, Da action dim, h critic chunk, h_a policy / executed chunk (DQC), h' effective chunk.

Critics take a flat observation (B, Do) and a chunk (B, L, Da) with L >= their own chunk length; they read only
the first `chunk_len` actions, so a partial critic scores the executed part of a longer diffusion chunk directly.
Every critic returns (K, B): member-wise. Values are either "sigmoid" (logits of a [0, 1] value, BCE losses,
DQC's representation) or "linear" (raw values, MSE / expectile losses, for general rewards; spec §4.1 step 1).

DQC (spec §2.4), one joint step over:
    y     = clip(R + gamma^{h'} (1 - done) sigma(V(s_{t+h'})), 0, 1)          online V, detached
    L_Q   = mean_i BCE(Q_i(s, a_{t:t+h}), y)                                   chunk critic (dqc only)
    L_P   = mean_i w_kd(y_i, p_i) BCE(QP_i(s, a_{t:t+h_a}), y_i),  y_i = sigma(sg Q_i)   member i -> member i
            (qc / ns / os: y_i = y, the h-step target, no chunk critic)
    L_V   = mean w_kb(q, sigma V) |V(s) - logit(q)|,  q = agg_i sigma(QPbar_i(s, a_{t:t+h_a}))   target QP
ALOE (spec §3.2, a reconstruction):
    y     = R + gamma^{h'} (1 - done) mean_m min_i Qbar_i(s_{t+h'}, a'_m),  a'_m ~ pi_current
    A     = min_i Q_i(s, a) - mean_m min_i Q_i(s, a_m);  weights clip(exp(A / beta)) or batch-normalised
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from policies.rl.critics import MLP, ValueNet, expectile_loss, soft_update, td_target

VARIANTS = ("dqc", "qc", "ns", "os")
OUTPUTS = ("sigmoid", "linear")
REGRESSIONS = ("expectile", "quantile")
AGGS = ("mean", "min")
WEIGHT_MODES = ("exp_clip", "batch_softmax", "norm_exp_clip", "none")
_EPS = 1e-6  # logit clamp (spec §4.4: logit of an aggregated probability must be clamped)


@dataclasses.dataclass(frozen=True)
class ChunkCriticConfig:
    """One config for DQC and its baselines (spec §2.6: the baselines are the same agent with flags).

    dqc: chunk critic over h, partial critic over h_a < h distilled from it.   qc: h_a = h, no chunk critic.
    ns:  h = n > 1, h_a = 1, no chunk critic (n-step return).                  os: h = h_a = 1.
    Defaults are the DQC code's (spec §2.6) except the network size (CPU-first, spec §4.1) and gamma 0.99
    (the code's 0.999 is for 1000-step OGBench horizons).
    """

    variant: str = "dqc"
    h: int = 25
    h_a: int = 5
    num_qs: int = 2
    gamma: float = 0.99
    kappa_d: float = 0.5  # distillation expectile (or quantile)
    kappa_b: float = 0.9  # implicit-backup quantile (or expectile)
    distill: str = "expectile"
    backup: str = "quantile"
    q_agg: str = "mean"  # value target and best-of-N scoring aggregate over members
    output: str = "sigmoid"
    tau: float = 0.005  # EMA of the partial critic's target copy
    hidden: tuple[int, ...] = (256, 256)
    layer_norm: bool = True

    def __post_init__(self) -> None:
        checks = [("variant", VARIANTS), ("distill", REGRESSIONS), ("backup", REGRESSIONS), ("q_agg", AGGS),
                  ("output", OUTPUTS)]
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ValueError(f"ChunkCriticConfig.{name}={getattr(self, name)!r}: expected one of {allowed}")
        h, ha, v = self.h, self.h_a, self.variant
        rule = {"dqc": 1 <= ha < h, "qc": ha == h >= 1, "ns": h > 1 and ha == 1, "os": h == ha == 1}[v]
        if not rule:
            want = {"dqc": "1 <= h_a < h (h_a == h is variant 'qc')", "qc": "h_a == h", "ns": "h > 1, h_a == 1",
                    "os": "h == h_a == 1"}[v]
            raise ValueError(f"ChunkCriticConfig: variant {v!r} with h={h}, h_a={ha}: expected {want}")
        for name in ("kappa_d", "kappa_b"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"ChunkCriticConfig.{name}={getattr(self, name)!r}: expected 0 < kappa < 1")
        if self.num_qs < 1 or not 0.0 < self.gamma <= 1.0 or not 0.0 < self.tau <= 1.0:
            raise ValueError(f"ChunkCriticConfig: num_qs={self.num_qs}, gamma={self.gamma}, tau={self.tau}: "
                             "expected num_qs >= 1, 0 < gamma <= 1, 0 < tau <= 1")

    @property
    def use_chunk_critic(self) -> bool:
        return self.variant == "dqc"


# ---------------------------------------------------------------------------------------------- networks
class ChunkCritic(nn.Module):
    """Ensemble Q_i(s, a_{1:L}): obs (B, Do), actions (B, >= L, Da) -> (K, B). Members are independent MLPs
    (policies.rl.critics.MLP; Mish instead of DQC's GELU: the project's critic MLP, no claimed effect)."""

    def __init__(self, obs_dim: int, action_dim: int, chunk_len: int, num_qs: int = 2,
                 hidden: Sequence[int] = (256, 256), layer_norm: bool = True):
        super().__init__()
        self.obs_dim, self.action_dim, self.chunk_len = obs_dim, action_dim, chunk_len
        self.members = nn.ModuleList(MLP(obs_dim + chunk_len * action_dim, hidden, layer_norm)
                                     for _ in range(num_qs))

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, executed(actions, self.chunk_len, self.action_dim)], -1)
        return torch.stack([m(x) for m in self.members])


def executed(actions: torch.Tensor, length: int, action_dim: int) -> torch.Tensor:
    """(B, L, Da) with L >= length -> (B, length * Da): the first `length` actions, flattened."""
    if actions.dim() != 3 or actions.shape[1] < length or actions.shape[2] != action_dim:
        raise ValueError(f"critic expects actions (B, >= {length}, {action_dim}), got {tuple(actions.shape)}")
    return actions[:, :length].reshape(actions.shape[0], -1)


# ---------------------------------------------------------------------------------------------- pure losses
def aggregate(q: torch.Tensor, agg: str, dim: int = 0) -> torch.Tensor:
    if agg not in AGGS:
        raise ValueError(f"ensemble aggregate {agg!r}: expected one of {AGGS}")
    return q.min(dim).values if agg == "min" else q.mean(dim)


def to_value(q: torch.Tensor, output: str) -> torch.Tensor:
    """Network output -> value scale (sigmoid of a logit, or the raw value)."""
    return torch.sigmoid(q) if output == "sigmoid" else q


def value_logit(p: torch.Tensor) -> torch.Tensor:
    return torch.logit(p.clamp(_EPS, 1 - _EPS))


def chunk_target(reward_sum: torch.Tensor, h_eff: torch.Tensor, done: torch.Tensor, next_value: torch.Tensor,
                 gamma: float, output: str) -> torch.Tensor:
    """(B,) y = R + gamma^{h'} (1 - done) V(s_{t+h'}) (detached; next_value on the value scale), clipped to [0, 1]
    in sigmoid mode (BCE targets must be probabilities)."""
    y = td_target(reward_sum, next_value, done, gamma, h_eff)
    return y.clamp(0.0, 1.0) if output == "sigmoid" else y


def _weighted_mean(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """mean over members and batch of x (K, B) weighted per sample by weight (B,) (normalised by its sum; choice:
    a batch of all-zero weights gives 0, not NaN)."""
    if weight is None:
        return x.mean()
    w = weight.to(x.dtype).expand_as(x)
    return (x * w).sum() / w.sum().clamp_min(1e-12)


def regression_loss(pred: torch.Tensor, target: torch.Tensor, output: str, kind: str = "expectile",
                    kappa: float = 0.5, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Asymmetric regression of pred (K, B) (network outputs) onto target (K, B) or (B,) (value scale, detached).

    expectile: w_kappa(y, p) * BCE(pred, y) (sigmoid; spec §2.4, the minimiser is the kappa-expectile in probability
      space) or policies.rl.critics.expectile_loss on y - pred (linear). kappa = 0.5 is plain BCE / half the MSE.
    quantile: w_kappa(y, p) * |pred - logit(y)| (pinball in logit space; sigmoid) or |pred - y| (linear).
    w_kappa(y, p) = kappa where y >= p, else 1 - kappa.
    """
    if kind not in REGRESSIONS:
        raise ValueError(f"regression kind {kind!r}: expected one of {REGRESSIONS}")
    target = target.detach().expand_as(pred)
    p = to_value(pred, output)
    w = torch.where(target >= p, kappa, 1.0 - kappa).detach()
    if kind == "expectile" and output == "linear":
        if weight is None:
            return expectile_loss(target - pred, kappa)
        # sqrt(w) * diff keeps the sign and squares to w * diff^2: expectile_loss with per-sample weights
        scaled = (target - pred) * weight.to(pred.dtype).clamp_min(0).sqrt()
        return expectile_loss(scaled, kappa) * pred.numel() / weight.expand_as(pred).sum().clamp_min(1e-12)
    if kind == "expectile":
        per = w * F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    elif output == "sigmoid":
        per = w * (pred - value_logit(target)).abs()
    else:
        per = w * (pred - target).abs()
    return _weighted_mean(per, weight)


def critic_td_loss(q: torch.Tensor, target: torch.Tensor, output: str,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric TD regression of every member q (K, B) onto one target (B,): BCE (sigmoid) or MSE (linear)."""
    target = target.detach().expand_as(q)
    if output == "sigmoid":
        per = F.binary_cross_entropy_with_logits(q, target, reduction="none")
    else:
        per = (q - target) ** 2
    return _weighted_mean(per, weight)


def backup_target(q_target: torch.Tensor, agg: str, output: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Aggregate the target partial critic (K, B) -> (value-scale (B,), network-scale (B,)). With min the logit
    min is exact (monotone); with mean the probability mean is re-logited with clamping (spec §4.4)."""
    if output == "linear":
        q = aggregate(q_target, agg)
        return q, q
    if agg == "min":
        z = q_target.min(0).values
        return torch.sigmoid(z), z
    p = torch.sigmoid(q_target).mean(0)
    return p, value_logit(p)


# ---------------------------------------------------------------------------------------------- DQC
class DQCCritics(nn.Module):
    """Chunk critic (dqc only), partial critic + EMA target, value. Modules are injected so tests can plug exact
    (tabular) ones with the same call signatures; `build` makes the MLP ones.

    chunk_critic(obs, actions) -> (K, B) over cfg.h actions; partial_critic(obs, actions) -> (K, B) over cfg.h_a;
    value(obs) -> (B,).
    """

    def __init__(self, cfg: ChunkCriticConfig, partial_critic: nn.Module, value: nn.Module,
                 chunk_critic: nn.Module | None = None):
        super().__init__()
        if cfg.use_chunk_critic != (chunk_critic is not None):
            raise ValueError(f"DQCCritics: variant {cfg.variant!r} "
                             f"{'needs' if cfg.use_chunk_critic else 'takes no'} chunk critic")
        self.cfg = cfg
        self.chunk_critic = chunk_critic
        self.partial_critic = partial_critic
        self.target_partial = copy.deepcopy(partial_critic).requires_grad_(False)
        self.value = value

    @classmethod
    def build(cls, cfg: ChunkCriticConfig, obs_dim: int, action_dim: int) -> DQCCritics:
        def critic(length: int) -> ChunkCritic:
            return ChunkCritic(obs_dim, action_dim, length, cfg.num_qs, cfg.hidden, cfg.layer_norm)

        return cls(cfg, critic(cfg.h_a), ValueNet(obs_dim, cfg.hidden, cfg.layer_norm),
                   critic(cfg.h) if cfg.use_chunk_critic else None)

    def losses(self, obs: torch.Tensor, actions: torch.Tensor, reward_sum: torch.Tensor, h_eff: torch.Tensor,
               done: torch.Tensor, next_obs: torch.Tensor, weight: torch.Tensor | None = None
               ) -> dict[str, torch.Tensor]:
        """One batch of chunks (robotstack.data.chunks.ChunkBatch as tensors; actions (B, h, Da), weight (B,)
        e.g. `complete` for the chunk critic's QC-style masking times any intervention weight) -> named losses
        and their sum under "total" (one optimiser over all modules, spec §2.4)."""
        c = self.cfg
        with torch.no_grad():
            y = chunk_target(reward_sum, h_eff, done, to_value(self.value(next_obs), c.output), c.gamma, c.output)
        out: dict[str, torch.Tensor] = {}
        qp = self.partial_critic(obs, actions)
        if self.chunk_critic is not None:
            q = self.chunk_critic(obs, actions)
            out["chunk"] = critic_td_loss(q, y, c.output, weight)
            distill_target = to_value(q.detach(), c.output)  # member i -> member i
        else:
            distill_target = y
        out["partial"] = regression_loss(qp, distill_target, c.output, c.distill, c.kappa_d, weight)
        with torch.no_grad():
            q_val, _ = backup_target(self.target_partial(obs, actions), c.q_agg, c.output)
        out["value"] = regression_loss(self.value(obs)[None], q_val, c.output, c.backup, c.kappa_b, weight)
        out["total"] = sum(out.values())
        return out

    def update_target(self) -> None:
        soft_update(self.target_partial, self.partial_critic, self.cfg.tau)

    @torch.no_grad()
    def score(self, obs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Best-of-N scores: obs (B, Do), candidates (B, N, L >= h_a, Da) -> (B, N), the online partial critic on
        the executed h_a actions, aggregated over members by cfg.q_agg (spec §2.4 (5): online, not target)."""
        return ensemble_scores(self.partial_critic, obs, candidates, self.cfg.q_agg)


# ---------------------------------------------------------------------------------------------- best-of-N
def ensemble_scores(critic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], obs: torch.Tensor,
                    candidates: torch.Tensor, agg: str = "mean") -> torch.Tensor:
    """critic(obs (B*N, Do), chunks (B*N, L, Da)) -> (K, B*N); returns (B, N) aggregated scores in one call."""
    b, n = candidates.shape[:2]
    flat_obs = obs.repeat_interleave(n, 0)
    q = critic(flat_obs, candidates.reshape(b * n, *candidates.shape[2:]))
    return aggregate(q, agg).reshape(b, n)


def best_of_n(scores: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (B, N), candidates (B, N, H, Da) -> (chosen (B, H, Da), index (B,)); ties go to the first index
    (torch.argmax returns the first maximal value). The whole H-chunk is returned; the caller executes h_a."""
    idx = scores.argmax(1)
    return candidates[torch.arange(len(idx)), idx], idx


# ---------------------------------------------------------------------------------------------- ALOE
def pessimistic_value(q_samples: torch.Tensor, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """(K, M, B) ensemble Q at M current-policy chunks -> (B,) sum_m w_m min_i Q_i (w uniform = the mean of
    M samples; pass the policy's probabilities to take an exact expectation over a finite chunk set)."""
    q = q_samples.min(0).values
    if sample_weight is None:
        return q.mean(0)
    w = sample_weight.to(q.dtype)
    w = w[:, None] if w.dim() == 1 else w
    return (q * w).sum(0) / w.sum(0)


def aloe_target(reward_sum: torch.Tensor, h_eff: torch.Tensor, done: torch.Tensor, next_q: torch.Tensor,
                gamma: float, sample_weight: torch.Tensor | None = None, agg: str = "min") -> torch.Tensor:
    """(B,) y = R + gamma^{h'} (1 - done) E_{a' ~ pi} agg_i Qbar_i(s_{t+h'}, a'), next_q (K, M, B) from the
    target ensemble at M chunks sampled from the *current* policy. agg 'min' is ALOE's pessimism; 'mean' is kept
    for the comparison test (spec §5 test 8). Linear values (spec §4.2: MSE)."""
    if agg == "min":
        v = pessimistic_value(next_q, sample_weight)
    else:
        v = pessimistic_value(next_q.mean(0, keepdim=True), sample_weight)
    return td_target(reward_sum, v, done, gamma, h_eff)


def aloe_advantage(q_data: torch.Tensor, q_policy: torch.Tensor,
                   sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """A(s, a) = min_i Q_i(s, a) - mean_m min_i Q_i(s, a'_m): q_data (K, B) at the buffer chunk, q_policy
    (K, M, B) at current-policy samples. (B,) detached."""
    return (q_data.min(0).values - pessimistic_value(q_policy, sample_weight)).detach()


def advantage_weights(adv: torch.Tensor, beta: float = 1.0, mode: str = "exp_clip",
                      w_max: float = 100.0) -> torch.Tensor:
    """Per-sample weights (B,) for the policy's denoising loss (AWR), detached.

    exp_clip:      min(exp(A / beta), w_max)                                       (AWR; w_max = IQL's 100)
    batch_softmax: B * softmax(A / beta) over the batch (mean 1, never overflows; same optimum as exp up to
                   a constant factor, spec §4.2)
    norm_exp_clip: min(exp(((A - mean) / std) / beta), w_max), A standardised over the batch (scale-free beta,
                   like RL-100's normalised advantages; std floored at 1e-8)
    none:          1 for every sample: the control (a plain BC fine-tune on the same windows and steps), which
                   separates what the critic's weights do from what fine-tuning itself does
    """
    if beta <= 0:
        raise ValueError(f"advantage_weights: beta={beta!r}, expected > 0")
    if mode not in WEIGHT_MODES:
        raise ValueError(f"advantage_weights: mode {mode!r}, expected one of {WEIGHT_MODES}")
    adv = adv.detach()
    if mode == "none":
        return torch.ones_like(adv)
    if mode == "batch_softmax":
        return adv.numel() * torch.softmax(adv.reshape(-1) / beta, 0).reshape(adv.shape)
    if mode == "norm_exp_clip":
        adv = (adv - adv.mean()) / adv.std(unbiased=False).clamp_min(1e-8)
    # clamp the exponent first so a huge advantage gives w_max, not inf
    return torch.exp((adv / beta).clamp(max=math.log(w_max)))


def intervention_weights(is_intervention: torch.Tensor, mode: str = "keep", weight: float = 1.0) -> torch.Tensor:
    """(B,) sample weights for human-intervened chunks (spec §4.3: ablation switch; ALOE's own rule is not
    stated): keep -> 1, drop -> 0, weight -> `weight` on intervened samples, 1 elsewhere."""
    flag = is_intervention.to(torch.bool)
    ones = torch.ones(flag.shape, device=flag.device)
    if mode == "keep":
        return ones
    if mode == "drop":
        return (~flag).float()
    if mode == "weight":
        return torch.where(flag, ones * float(weight), ones)
    raise ValueError(f"intervention_weights: mode {mode!r}, expected keep / drop / weight")


class AloeCritic(nn.Module):
    """Ensemble chunk critic over h executed actions + EMA target, linear values (spec §4.2)."""

    def __init__(self, critic: nn.Module, gamma: float = 0.99, tau: float = 0.005, agg: str = "min"):
        super().__init__()
        if agg not in AGGS:
            raise ValueError(f"AloeCritic: agg {agg!r}, expected one of {AGGS}")
        self.critic, self.gamma, self.tau, self.agg = critic, gamma, tau, agg
        self.target = copy.deepcopy(critic).requires_grad_(False)

    def loss(self, obs: torch.Tensor, actions: torch.Tensor, reward_sum: torch.Tensor, h_eff: torch.Tensor,
             done: torch.Tensor, next_obs: torch.Tensor, next_policy_chunks: torch.Tensor,
             sample_weight: torch.Tensor | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
        """next_policy_chunks (M, B, L, Da): chunks sampled from the current policy at next_obs."""
        m, b = next_policy_chunks.shape[:2]
        with torch.no_grad():
            nq = self.target(next_obs.repeat(m, 1), next_policy_chunks.reshape(m * b, *next_policy_chunks.shape[2:]))
            y = aloe_target(reward_sum, h_eff, done, nq.reshape(-1, m, b), self.gamma, sample_weight, self.agg)
        return critic_td_loss(self.critic(obs, actions), y, "linear", weight)

    def update_target(self) -> None:
        soft_update(self.target, self.critic, self.tau)
