"""Critic scorer for best-of-N (docs/CONTRACTS.md "Critic scorer"), its on-disk format, and the best-of-N
policy that uses it in sim evaluation.

Glossary: B batch, N candidates, To observation history, D per-key obs width, h_a scored (executed) actions,
Da action dim, K ensemble members, Do flat critic input = sum over keys of To * D.

What the critic reads (choice, recorded in scorer.json as "features": "obs_window"): the raw observation window
(To frames of every obs key), normalised per key with the scorer's own min-max stats and flattened, NOT the frozen
policy encoder's features. Why: the scorer then stands alone (one small graph for the ONNX artifact, no policy
weights inside), it can score any proposal, and a policy fine-tuned by AWR does not silently change the critic's
input. The state tasks' encoders are small MLPs over the same vector, so little is lost.

    CriticScorer.forward(obs {key: (B, To, D)} env units, actions (B, N, h_a, Da) env units) -> (B, N)
    scores = agg_i value(Q_i(s, a_{:h_a})),  agg = min (pessimistic, default) or mean;  value = sigmoid for
    "sigmoid" critics (DQC's [0, 1] logits), identity for "linear" ones (ALOE). Higher = better.

On disk (a critic checkpoint dir, RUN_DIR/checkpoints/step_N of `train critic`):
    scorer.json          {"format": "robotstack.critic_scorer", "version": 1, "config": ScorerConfig, "extra"}
    scorer.safetensors   the scorer's state dict (normaliser buffers + critic members)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from robotstack.core.errors import RobotstackError

from policies.common.normalizer import Normalizer
from policies.critics.chunked import AGGS, OUTPUTS, ChunkCritic, aggregate, best_of_n, to_value

SCORER_JSON, SCORER_WEIGHTS = "scorer.json", "scorer.safetensors"
FORMAT, VERSION = "robotstack.critic_scorer", 1
ACTION_KEY = "action"


class ScorerError(RobotstackError):
    """A scorer dir is missing files, has another format, or its tensors do not match its config."""


@dataclasses.dataclass(frozen=True)
class ScorerConfig:
    obs_shapes: dict[str, tuple[int, ...]]  # key -> per-frame shape, in the order they are concatenated
    n_obs_steps: int  # To
    action_dim: int  # Da
    chunk_len: int  # h_a: how many leading actions of a candidate are scored
    num_qs: int = 2
    hidden: tuple[int, ...] = (256, 256)
    layer_norm: bool = True
    output: str = "sigmoid"  # sigmoid | linear (chunked.OUTPUTS)
    agg: str = "min"  # min | mean over ensemble members
    features: str = "obs_window"  # what the critic reads (module docstring)

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS or self.agg not in AGGS:
            raise ScorerError(f"ScorerConfig: output={self.output!r} (expected {OUTPUTS}), agg={self.agg!r} "
                              f"(expected {AGGS})")
        if self.n_obs_steps < 1 or self.chunk_len < 1 or self.action_dim < 1 or not self.obs_shapes:
            raise ScorerError(f"ScorerConfig: n_obs_steps={self.n_obs_steps}, chunk_len={self.chunk_len}, "
                              f"action_dim={self.action_dim}, obs_shapes={self.obs_shapes}: expected positive "
                              "sizes and at least one obs key")

    @property
    def obs_dim(self) -> int:
        return self.n_obs_steps * sum(int(torch.Size(s).numel()) for s in self.obs_shapes.values())

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["obs_shapes"] = {k: list(v) for k, v in self.obs_shapes.items()}
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "scorer config") -> ScorerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ScorerError(f"{where}: unknown key(s) {unknown}; expected {sorted(names)}")
        d = dict(d)
        d["obs_shapes"] = {k: tuple(int(x) for x in v) for k, v in d.get("obs_shapes", {}).items()}
        if "hidden" in d:
            d["hidden"] = tuple(int(x) for x in d["hidden"])
        try:
            return cls(**d)
        except TypeError as exc:
            raise ScorerError(f"{where}: {exc}") from exc


class CriticScorer(nn.Module):
    """obs {key: (B, To, D)}, actions (B, N, >= h_a, Da), both env units -> scores (B, N). Owns its normalisation
    (Normalizer buffers, min-max per key and for the action) and an ensemble ChunkCritic over h_a actions."""

    def __init__(self, config: ScorerConfig):
        super().__init__()
        self.config = c = config
        shapes = {**c.obs_shapes, ACTION_KEY: (c.action_dim,)}
        self.normalizer = Normalizer(shapes, {k: "minmax" for k in shapes})
        self.critic = ChunkCritic(c.obs_dim, c.action_dim, c.chunk_len, c.num_qs, c.hidden, c.layer_norm)

    def fit_normalizer(self, data: Mapping[str, Any]) -> None:
        """data: {obs key: (N, *shape), "action": (N, Da)} (the training store's frames)."""
        self.normalizer.fit({k: data[k] for k in self.normalizer.keys()})

    def encode_obs(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """{key: (B, To, *shape)} env units -> (B, Do) normalised, flattened window (the critic's input)."""
        c = self.config
        parts = []
        for key in c.obs_shapes:
            if key not in obs:
                raise ScorerError(f"scorer: obs key {key!r} missing; got {sorted(obs)}")
            x = obs[key].to(torch.float32)
            if x.dim() < 2 or x.shape[1] != c.n_obs_steps:
                raise ScorerError(f"scorer: obs[{key!r}] has shape {tuple(x.shape)}, expected (B, "
                                  f"{c.n_obs_steps}, *{c.obs_shapes[key]})")
            parts.append(self.normalizer.normalize(key, x).reshape(x.shape[0], -1))
        return torch.cat(parts, -1)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.normalizer.normalize(ACTION_KEY, actions.to(torch.float32))

    def forward(self, obs: Mapping[str, torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
        if actions.dim() != 4:
            raise ScorerError(f"scorer: actions must be (B, N, h_a, Da), got {tuple(actions.shape)}")
        b, n = actions.shape[:2]
        feat = self.encode_obs(obs)  # (B, Do)
        flat = self.normalize_actions(actions[:, :, :self.config.chunk_len]).reshape(b * n, -1, actions.shape[-1])
        q = self.critic(feat.repeat_interleave(n, 0), flat)  # (K, B*N)
        return aggregate(to_value(q, self.config.output), self.config.agg).reshape(b, n)


# ------------------------------------------------------------------------------------------------ on disk
def save_scorer(path: str | Path, scorer: CriticScorer, extra: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in scorer.state_dict().items()}
    save_file(state, str(path / SCORER_WEIGHTS))
    doc = {"format": FORMAT, "version": VERSION, "config": scorer.config.to_dict(), "extra": extra or {}}
    (path / SCORER_JSON).write_text(json.dumps(doc, indent=2) + "\n")
    return path


def read_scorer_doc(path: str | Path) -> dict[str, Any]:
    file = Path(path) / SCORER_JSON
    if not file.is_file():
        raise ScorerError(f"{file}: missing (a critic scorer dir holds {SCORER_JSON} + {SCORER_WEIGHTS}; "
                          "`robotstack train critic` writes one under RUN_DIR/checkpoints/latest)")
    doc = json.loads(file.read_text())
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ScorerError(f"{file}: format {doc.get('format')!r} v{doc.get('version')!r}, expected {FORMAT!r} "
                          f"v{VERSION}")
    return doc


def load_scorer(path: str | Path) -> CriticScorer:
    """Open a scorer dir (e.g. RUN_DIR/checkpoints/latest of `train critic`); returns it in eval mode."""
    path = Path(path)
    doc = read_scorer_doc(path)
    scorer = CriticScorer(ScorerConfig.from_dict(doc["config"], str(path / SCORER_JSON)))
    weights = path / SCORER_WEIGHTS
    if not weights.is_file():
        raise ScorerError(f"{weights}: missing")
    state = load_file(str(weights))
    try:
        scorer.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ScorerError(f"{weights}: does not match {path / SCORER_JSON}: {exc}") from exc
    return scorer.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------ best-of-N policy
class BestOfNPolicy(nn.Module):
    """A diffusion policy as the proposal + a scorer: per decision the policy samples N chunks in one batched call
    (obs repeated N times), the scorer scores each chunk's *executed* actions (the first h_a of them) and the best
    chunk's executed actions are returned. Quacks like DiffusionPolicy for robotstack.eval.rollout.evaluate
    (`config`, `predict_action`), so sim evaluation batches it over vector envs unchanged."""

    def __init__(self, policy: nn.Module, scorer: CriticScorer, num_candidates: int = 32):
        super().__init__()
        if num_candidates < 1:
            raise ScorerError(f"best-of-N: num_candidates={num_candidates}, expected >= 1")
        pc, sc = policy.config, scorer.config
        missing = [k for k in sc.obs_shapes if k not in pc.obs_shapes]
        if missing or sc.n_obs_steps != pc.n_obs_steps or sc.action_dim != pc.action_dim \
                or sc.chunk_len > pc.n_action_steps:
            raise ScorerError(f"best-of-N: scorer (keys {list(sc.obs_shapes)}, To={sc.n_obs_steps}, "
                              f"Da={sc.action_dim}, h_a={sc.chunk_len}) does not fit the policy (keys "
                              f"{list(pc.obs_shapes)}, To={pc.n_obs_steps}, Da={pc.action_dim}, "
                              f"Ta={pc.n_action_steps}): expected the scorer's keys present, equal To and Da, "
                              "h_a <= Ta")
        self.policy, self.scorer, self.num_candidates = policy, scorer, int(num_candidates)
        self.config = pc

    @torch.no_grad()
    def candidates(self, obs: Mapping[str, torch.Tensor], **sample_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (executed (B, N, Ta, Da), chunks (B, N, T, Da)) env units, from one batched policy call."""
        n = self.num_candidates
        b = next(iter(obs.values())).shape[0]
        rep = {k: v.repeat_interleave(n, 0) for k, v in obs.items()}
        pred = self.policy.predict_action(rep, **sample_kwargs)
        return pred.action.reshape(b, n, *pred.action.shape[1:]), pred.chunk.reshape(b, n, *pred.chunk.shape[1:])

    @torch.no_grad()
    def predict_action(self, obs: Mapping[str, torch.Tensor], **sample_kwargs: Any):
        from policies.diffusion.model import ActionPrediction

        executed, chunks = self.candidates(obs, **sample_kwargs)
        scores = self.scorer({k: obs[k] for k in self.scorer.config.obs_shapes}, executed)
        best, _ = best_of_n(scores, executed)
        best_chunk, _ = best_of_n(scores, chunks)
        return ActionPrediction(best, best_chunk)


def load_best_of_n(policy_dir: str | Path, scorer_dir: str | Path, num_candidates: int = 32,
                   weights: str = "auto") -> BestOfNPolicy:
    from policies.checkpoint import load_checkpoint

    return BestOfNPolicy(load_checkpoint(policy_dir, weights=weights), load_scorer(scorer_dir), num_candidates)
