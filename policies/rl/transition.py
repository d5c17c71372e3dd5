"""Learned transition ensemble T_hat for RL-100's AM-Q (rl100.md §4.3): used for off-policy evaluation only.

Glossary: B batch, E ensemble members, Dc encoder-feature (cond) width, Ta executed actions, Da action dim,
Din = Dc + Ta*Da input width.

A probabilistic MLP ensemble (MOPO / MOBILE style, the official code's `ensemble_dynamics_for_batch.py`) in the
frozen encoder's feature space: input = features of the obs window at t (B, Dc) + the executed chunk (B, Ta*Da),
output = a diagonal Gaussian over delta features (the window at t + n_c minus the one at t). No reward head
(`predict_r` False in the code: AM-Q reads the IQL Q instead).

    fit_ensemble(feat, action, next_feat, cfg, gen) -> (TransitionEnsemble, FitReport)
    ensemble.sample(feat (B, Dc), action (B, Ta*Da), gen) -> next feat (B, Dc)   (one random elite per row,
                                                           clamped to the training features' range)

Loss: Gaussian NLL with inverse-variance weighting, summed over dims, plus the max/min-logvar bound terms
(0.01 (max_logvar - min_logvar)) and per-layer weight decay. Holdout early stopping: a fixed holdout split;
each member keeps its weights of its best holdout MSE; training stops when no member improved by > 1% for
`patience` epochs (the code's max_epochs_since_update; MBPO's rule). Elites = the `elites` members with the
lowest holdout MSE (`FitReport.holdout_mse`).

CPU sizing (rl100.md §12): the official code uses [400]x4 (chunk scripts [1024, 1024, 512, 512]) and up to
150-250 epochs; the defaults here are [200, 200, 200] and 100 epochs, which fit a state-feature store of a
few thousand transitions in seconds on one core. Members are batched as one (E, in, out) matmul per layer.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from policies.common.optim import gradient_step


@dataclasses.dataclass
class EnsembleConfig:
    members: int = 7
    elites: int = 5
    hidden: list[int] = dataclasses.field(default_factory=lambda: [200, 200, 200])  # CPU-sized, see docstring
    lr: float = 1e-3
    weight_decay: list[float] = dataclasses.field(default_factory=lambda: [2.5e-5, 5e-5, 7.5e-5, 1e-4])
    batch_size: int = 256
    max_epochs: int = 100
    patience: int = 10  # epochs without a > 1% holdout improvement of any member
    holdout: float = 0.1  # share of transitions held out (at most 1000, MBPO)

    def __post_init__(self) -> None:
        from robotstack.core.errors import ConfigError

        if not 1 <= self.elites <= self.members:
            raise ConfigError(f"config dynamics: need 1 <= elites <= members, got {self.elites}/{self.members}")
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"config dynamics.hidden: expected a non-empty list of widths, got {self.hidden}")
        if len(self.weight_decay) != len(self.hidden) + 1:
            raise ConfigError(f"config dynamics.weight_decay: one value per layer ({len(self.hidden) + 1}), "
                              f"got {self.weight_decay}")
        if not 0 < self.holdout < 1 or self.max_epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ConfigError("config dynamics: need 0 < holdout < 1, max_epochs, batch_size, patience >= 1")


class EnsembleLinear(nn.Module):
    """E independent linear layers applied as one batched matmul: (E, B, in) -> (E, B, out)."""

    def __init__(self, members: int, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(members, 1, d_out))
        nn.init.trunc_normal_(self.weight, std=1.0 / (2.0 * math.sqrt(d_in)))  # MBPO's init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class TransitionEnsemble(nn.Module):
    """(B, Dc) features + (B, A) executed chunk -> per-member Gaussian over delta features (E, B, Dc)."""

    def __init__(self, feat_dim: int, action_size: int, members: int = 7, hidden: list[int] = (200, 200, 200),
                 elites: int = 5):
        super().__init__()
        self.feat_dim, self.action_size, self.members = int(feat_dim), int(action_size), int(members)
        self.hidden = [int(h) for h in hidden]
        dims = [self.feat_dim + self.action_size, *self.hidden]
        self.layers = nn.ModuleList(EnsembleLinear(members, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = EnsembleLinear(members, dims[-1], 2 * self.feat_dim)
        self.max_logvar = nn.Parameter(torch.full((1, 1, self.feat_dim), 0.5))
        self.min_logvar = nn.Parameter(torch.full((1, 1, self.feat_dim), -10.0))
        # input / target standardisation, fitted on the training split (buffers: they travel with the weights)
        self.register_buffer("in_mean", torch.zeros(dims[0]))
        self.register_buffer("in_std", torch.ones(dims[0]))
        self.register_buffer("out_mean", torch.zeros(self.feat_dim))
        self.register_buffer("out_std", torch.ones(self.feat_dim))
        self.register_buffer("elite_idx", torch.arange(elites, dtype=torch.long))
        # per-dim range of the features seen in training: sampled rollouts are clamped to it (below)
        self.register_buffer("feat_lo", torch.full((self.feat_dim,), -torch.inf))
        self.register_buffer("feat_hi", torch.full((self.feat_dim,), torch.inf))

    def forward(self, feat: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mean, logvar) of the standardised delta, each (E, B, Dc). feat/action may carry a leading E."""
        x = torch.cat([feat, action.reshape(*action.shape[:-1], -1)], -1)
        x = (x - self.in_mean) / self.in_std
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.members, -1, -1)
        for layer in self.layers:
            x = nn.functional.silu(layer(x))
        mean, logvar = self.head(x).chunk(2, -1)
        # soft bounds (MOPO): logvar stays in [min_logvar, max_logvar], both learned
        logvar = self.max_logvar - nn.functional.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + nn.functional.softplus(logvar - self.min_logvar)
        return mean, logvar

    def predict(self, feat: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mean, std) of the next features in feature units, each (E, B, Dc)."""
        mean, logvar = self(feat, action)
        return feat + mean * self.out_std + self.out_mean, (0.5 * logvar).exp() * self.out_std

    @torch.no_grad()
    def sample(self, feat: torch.Tensor, action: torch.Tensor, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """One sampled next-feature row per input row (B, Dc) from a uniformly drawn elite (the code's rollout),
        clamped to the training features' range: a rollout that leaves the data's support would otherwise feed the
        critic features it extrapolates on without bound (seen: AM-Q -1e3 from a 0..1 Q after one step)."""
        mean, std = self.predict(feat, action)
        b = feat.shape[0]
        pick = self.elite_idx[torch.randint(0, len(self.elite_idx), (b,), generator=generator)]
        rows = torch.arange(b)
        z = torch.randn((b, self.feat_dim), generator=generator)
        return torch.maximum(torch.minimum(mean[pick, rows] + std[pick, rows] * z, self.feat_hi), self.feat_lo)

    # ----------------------------------------------------------------------------------------- on disk
    def save(self, path: str | Path, report: FitReport | None = None) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().clone() for k, v in self.state_dict().items()},
                  str(path / "model.safetensors"))
        meta = {"feat_dim": self.feat_dim, "action_size": self.action_size, "members": self.members,
                "hidden": self.hidden, "elites": self.elite_idx.tolist()}
        if report is not None:
            meta |= {"holdout_mse": report.holdout_mse, "epochs": report.epochs}
        (path / "dynamics.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> TransitionEnsemble:
        from safetensors.torch import load_file

        path = Path(path)
        meta_file = path / "dynamics.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file}: not a transition-ensemble dir")
        meta = json.loads(meta_file.read_text())
        model = cls(meta["feat_dim"], meta["action_size"], meta["members"], meta["hidden"], len(meta["elites"]))
        model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
        return model.eval()


class FitReport(NamedTuple):
    holdout_mse: list[float]  # (E,) best holdout MSE of each member (standardised targets)
    elites: list[int]  # members with the lowest holdout MSE, best first
    epochs: int  # epochs run (early stopping included)
    train_nll: float  # last epoch's mean training loss


def _scale(x: torch.Tensor) -> torch.Tensor:
    # a (near-)constant column keeps scale 1 (MBPO's StandardScaler): dividing by its ~0 std would turn any other
    # value of it (e.g. a policy's gripper command where the data only ever closed) into a 1e6-sized input
    std = x.std(0)
    return torch.where(std < 1e-4, torch.ones_like(std), std)


def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(E, B, D) -> (E,) mean over B of sum over D of the Gaussian NLL (constants dropped): the
    inverse-variance-weighted squared error plus logvar."""
    return (((mean - target) ** 2) * torch.exp(-logvar) + logvar).sum(-1).mean(-1)


def fit_ensemble(feat: torch.Tensor, action: torch.Tensor, next_feat: torch.Tensor, cfg: EnsembleConfig,
                 generator: torch.Generator, progress=None) -> tuple[TransitionEnsemble, FitReport]:
    """Fit on N transitions (feat (N, Dc), action (N, A), next_feat (N, Dc)); `progress(epoch, holdout)`
    is called after every epoch. Deterministic given the generator (CPU)."""
    n = feat.shape[0]
    action = action.reshape(n, -1)
    perm = torch.randperm(n, generator=generator)
    n_hold = min(max(1, int(round(cfg.holdout * n))), 1000, n - 1)
    hold, train = perm[:n_hold], perm[n_hold:]
    delta = next_feat - feat
    x_all = torch.cat([feat, action], -1)
    torch.manual_seed(int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator)))  # weight init
    model = TransitionEnsemble(feat.shape[1], action.shape[1], cfg.members, cfg.hidden, cfg.elites)
    model.in_mean.copy_(x_all[train].mean(0))
    model.in_std.copy_(_scale(x_all[train]))
    model.out_mean.copy_(delta[train].mean(0))
    model.out_std.copy_(_scale(delta[train]))
    model.feat_lo.copy_(torch.minimum(feat.min(0).values, next_feat.min(0).values))
    model.feat_hi.copy_(torch.maximum(feat.max(0).values, next_feat.max(0).values))
    target = (delta - model.out_mean) / model.out_std
    layers = [*model.layers, model.head]
    groups = [{"params": list(layer.parameters()), "weight_decay": wd} for layer, wd in zip(layers, cfg.weight_decay)]
    groups.append({"params": [model.max_logvar, model.min_logvar], "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr)  # decoupled per-layer decay (the code adds an L2 term; same role)

    def holdout_mse() -> torch.Tensor:
        with torch.no_grad():
            mean, _ = model(feat[hold], action[hold])
            return ((mean - target[hold]) ** 2).mean((1, 2))

    best = holdout_mse()
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    since, epoch, loss_mean = 0, 0, float("nan")
    m = len(train)
    for epoch in range(1, cfg.max_epochs + 1):
        # each member sees its own shuffle of the training split (bootstrap-like diversity)
        order = torch.stack([train[torch.randperm(m, generator=generator)] for _ in range(cfg.members)])
        losses = []
        for s in range(0, m, cfg.batch_size):
            idx = order[:, s:s + cfg.batch_size]  # (E, b)
            mean, logvar = model(feat[idx], action[idx])
            loss = gaussian_nll(mean, logvar, target[idx]).sum()
            loss = loss + 0.01 * (model.max_logvar.sum() - model.min_logvar.sum())
            gradient_step(opt, loss)
            losses.append(float(loss.detach()) / cfg.members)
        loss_mean = sum(losses) / len(losses)
        mse = holdout_mse()
        improved = (best - mse) / best.abs().clamp(min=1e-12) > 0.01
        if bool(improved.any()):
            state = model.state_dict()
            for k, v in state.items():
                if v.dim() >= 1 and v.shape[0] == cfg.members and k.startswith(("layers.", "head.")):
                    best_state[k][improved] = v[improved].detach().clone()
            best_state["max_logvar"], best_state["min_logvar"] = (model.max_logvar.detach().clone(),
                                                                  model.min_logvar.detach().clone())
            best = torch.where(improved, mse, best)
            since = 0
        else:
            since += 1
        if progress is not None:
            progress(epoch, float(best.mean()))
        if since >= cfg.patience:
            break
    model.load_state_dict(best_state)
    elites = torch.argsort(best)[:cfg.elites]
    model.elite_idx.copy_(elites)
    model.eval().requires_grad_(False)
    return model, FitReport([float(v) for v in best], elites.tolist(), epoch, loss_mean)
