"""RL-100 stage maths without an env (rl100.md §4.5, §5, §11): GAE, the OPE gate, AM-Q.

Glossary: N decisions per env (time), E parallel envs, B batch of start states, H model-rollout horizon,
n_c chunk length (one decision = n_c env steps; the inter-decision discount is gamma^{n_c}).

    gae(rewards, values, next_values, terminated, truncated, gamma, lam, n_c) -> (advantages, returns)   (N, E)
    ope_gate(amq_new, amq_old, delta, mode)  -> GateDecision(amq_old, amq_new, delta, margin, accepted, reverted)
    apply_gate(decision, candidate, behaviour) -> copies weights: accept -> behaviour <- candidate,
                                                  revert -> candidate <- behaviour
    am_q(states, policy_fn, model_fn, q_fn, horizon, ...) -> AMQ(value, per_start)

numpy only; AM-Q takes callables so a learned ensemble, or the exact model in tests, plugs in the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

GATE_MODES = ("delta_revert", "strict_no_revert")
AMQ_ESTIMATORS = ("bootstrap", "mean_q")


# ---------------------------------------------------------------------------------------------- GAE
def gae(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray, terminated: np.ndarray,
        truncated: np.ndarray, gamma: float = 0.99, lam: float = 0.95, n_c: int | np.ndarray = 1
        ) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over decisions, time-major (N, E) (or (N,) for one env).

    rewards: the decision's reward; for a chunk, sum_j gamma^j r_{t+j} (policies.rl.critics.chunk_reward_sum).
    values: V(s_t). next_values: V(s_{t+1}); where the episode ended (terminated or truncated) it must be
      V(s_final) of the real last observation, not of the reset observation the vector env returns.
    terminated: a true terminal: no bootstrap. truncated: a time limit: bootstraps from V(s_final).
    Both end the episode, so the recursion does not carry A_{t+1} across them. The last row bootstraps
    from next_values (the value of the state after the buffer).
    n_c: int, or (N, E) steps actually taken (a chunk cut short by a truncation) -> discount gamma^{n_c}.

        delta_t = r_t + gamma^{n_c} (1 - term_t) V(s_{t+1}) - V(s_t)
        A_t     = delta_t + gamma^{n_c} lam (1 - (term_t | trunc_t)) A_{t+1}
    -> advantages (N, E), returns = advantages + values (the value target).
    """
    r = np.asarray(rewards, np.float64)
    shapes = {name: np.shape(x) for name, x in (("values", values), ("next_values", next_values),
                                                 ("terminated", terminated), ("truncated", truncated))}
    bad = {k: s for k, s in shapes.items() if s != r.shape}
    if bad:
        raise ValueError(f"gae: every input must have the rewards' shape {r.shape}; got {bad}")
    v, nv = np.asarray(values, np.float64), np.asarray(next_values, np.float64)
    term = np.asarray(terminated, bool)
    done = term | np.asarray(truncated, bool)
    disc = gamma ** np.broadcast_to(np.asarray(n_c, np.float64), r.shape)
    delta = r + disc * (~term) * nv - v
    adv = np.zeros_like(r)
    last = np.zeros_like(r[0])
    for t in range(r.shape[0] - 1, -1, -1):
        last = delta[t] + disc[t] * lam * (~done[t]) * last
        adv[t] = last
    return adv, adv + v


# ---------------------------------------------------------------------------------------------- OPE gate
@dataclasses.dataclass(frozen=True)
class GateDecision:
    amq_old: float  # AM-Q of the behaviour policy pi_i (delta mode) / best so far (strict mode)
    amq_new: float  # AM-Q of the candidate
    delta: float  # relative margin (0.05)
    margin: float  # delta * |amq_old| (0 in strict mode)
    accepted: bool  # candidate becomes the new behaviour policy
    reverted: bool  # candidate weights go back to the behaviour policy
    mode: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def ope_gate(amq_new: float, amq_old: float, delta: float = 0.05, mode: str = "delta_revert") -> GateDecision:
    """RL-100's acceptance test (paper Eq. 9 as read by fork H).

    "delta_revert" (default; spec §13: the paper says "reject", we read it as revert, as fork H does):
      accept iff amq_new - amq_old >= delta * |amq_old|, else revert the candidate to pi_i.
    "strict_no_revert" (official code / Uni-O4): accept iff amq_new > amq_old (amq_old = best so far), and a
      rejected candidate keeps training against the stale pi_i; delta is ignored.
    """
    if mode not in GATE_MODES:
        raise ValueError(f"gate mode {mode!r} is not one of {GATE_MODES}")
    if not (np.isfinite(amq_new) and np.isfinite(amq_old)):
        # A blown-up OPE (the Uni-O4 README's warning) must never accept a candidate.
        return GateDecision(float(amq_old), float(amq_new), float(delta), float("nan"), False,
                            mode == "delta_revert", mode)
    if mode == "strict_no_revert":
        return GateDecision(float(amq_old), float(amq_new), float(delta), 0.0, bool(amq_new > amq_old), False, mode)
    margin = delta * abs(amq_old)
    accepted = bool(amq_new - amq_old >= margin)
    return GateDecision(float(amq_old), float(amq_new), float(delta), float(margin), accepted, not accepted, mode)


def apply_gate(decision: GateDecision, candidate: Any, behaviour: Any) -> None:
    """Act on a decision with two modules (anything with state_dict/load_state_dict, e.g. the trained and the
    behaviour DiffusionPolicy): accepted -> behaviour <- candidate; reverted -> candidate <- behaviour.
    load_state_dict copies values, so the two never share storage. Optimiser moments are left alone (spec §13:
    not stated; the caller may reset them on a revert)."""
    if decision.accepted:
        behaviour.load_state_dict(candidate.state_dict())
    elif decision.reverted:
        candidate.load_state_dict(behaviour.state_dict())


# ---------------------------------------------------------------------------------------------- AM-Q
class AMQ(NamedTuple):
    value: float  # mean over start states
    per_start: np.ndarray  # (B,) estimate per start state


def am_q(states: Any, policy_fn: Callable[[Any], Any], model_fn: Callable[[Any, Any], Any],
         q_fn: Callable[[Any, Any], np.ndarray], horizon: int, reward_fn: Callable[[Any, Any], np.ndarray] | None
         = None, gamma: float = 0.99, terminal_fn: Callable[[Any], np.ndarray] | None = None,
         estimator: str = "bootstrap") -> AMQ:
    """Approximate-model Q evaluation of a policy from B start states (batched callables, any state type):

    policy_fn(s) -> a; model_fn(s, a) -> s' (a sample of the learned transition model, e.g. a random elite);
    q_fn(s, a) -> (B,) (min(Q1, Q2) of the IQL critic); reward_fn(s, a) -> (B,); terminal_fn(s') -> (B,) bool.
    gamma is per decision: pass gamma^{n_c} for chunk policies.

    "bootstrap" (default, this project's choice): sum_{t<H} gamma^t r(s_t, a_t) + gamma^H Q(s_H, a_H); rows
      stop at a model terminal (no reward or bootstrap after it). With the exact model and Q = Q^pi it is an
      unbiased estimate of Q^pi(s_0, pi(s_0)), i.e. of the Monte Carlo return. H = 0 is plain Q(s_0, pi(s_0)).
    "mean_q" (official code / Uni-O4): mean over the H steps of Q(s_t, a_t), no reward model, terminated rows
      dropped (paper: the sum over t, which is H x this mean).
    Spec §13: H and the batch size are not in the paper (code H = 20, batch 512); the caller chooses.
    """
    if estimator not in AMQ_ESTIMATORS:
        raise ValueError(f"AM-Q estimator {estimator!r} is not one of {AMQ_ESTIMATORS}")
    if estimator == "bootstrap" and reward_fn is None and horizon > 0:
        raise ValueError("AM-Q 'bootstrap' with horizon > 0 needs a reward_fn; use estimator='mean_q' without one")
    if horizon < 0 or (estimator == "mean_q" and horizon < 1):
        raise ValueError(f"AM-Q horizon must be >= 0 (>= 1 for mean_q), got {horizon}")
    s = states
    alive = None
    total = q_sum = q_count = None
    for t in range(horizon + (1 if estimator == "bootstrap" else 0)):
        a = policy_fn(s)
        q = np.asarray(q_fn(s, a), np.float64)
        if alive is None:
            alive = np.ones(q.shape, bool)
            total, q_sum, q_count = np.zeros(q.shape), np.zeros(q.shape), np.zeros(q.shape)
        if estimator == "mean_q":
            q_sum += np.where(alive, q, 0.0)
            q_count += alive
            if t == horizon - 1:
                break
        elif t == horizon:
            total += np.where(alive, gamma ** horizon * q, 0.0)
            break
        else:
            total += np.where(alive, gamma ** t * np.asarray(reward_fn(s, a), np.float64), 0.0)
        s = model_fn(s, a)
        if terminal_fn is not None:
            alive = alive & ~np.asarray(terminal_fn(s), bool)
    if estimator == "mean_q":
        per = q_sum / np.maximum(q_count, 1)
        return AMQ(float(q_sum.sum() / max(q_count.sum(), 1)), per)
    return AMQ(float(total.mean()), total)
