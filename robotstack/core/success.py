"""Sparse task success as data: the sim task declares it, the exporter copies it into the manifest, the
runtime judges it from the arm's published observation (so the criterion is written once, in sim/tasks/*.py).

A criterion is a list of terms that must all hold; today one kind of term exists:

    {"distance": [key_a, key_b], "dims": [i, ...], "below": tol}
        || obs[key_a][dims] - obs[key_b][dims] ||_2 < tol       (keys are observation keys, core.keys)

``None`` (or a missing criterion) means the task's success cannot be judged from the published state (contact,
release, orientation): episodes then end by step limit or the operator.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from robotstack.core.errors import ConfigError

TERM_KEYS = {"distance", "dims", "below"}


def check_criterion(criterion: Any, where: str) -> list[dict] | None:
    """Validate the shape of a criterion; raise ConfigError naming `where` and what was expected."""
    if criterion is None:
        return None
    if not isinstance(criterion, list) or not criterion:
        raise ConfigError(f"{where}: expected a non-empty list of terms or null, got {criterion!r}")
    for i, term in enumerate(criterion):
        if not isinstance(term, dict) or set(term) != TERM_KEYS:
            raise ConfigError(f"{where}[{i}]: expected a term with keys {sorted(TERM_KEYS)}, got {term!r}")
        pair, dims, tol = term["distance"], term["dims"], term["below"]
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(k, str) for k in pair)):
            raise ConfigError(f"{where}[{i}].distance: expected [obs_key, obs_key], got {pair!r}")
        if not (isinstance(dims, list) and dims and all(isinstance(d, int) and d >= 0 for d in dims)):
            raise ConfigError(f"{where}[{i}].dims: expected a non-empty list of indices >= 0, got {dims!r}")
        if not isinstance(tol, (int, float)) or not tol > 0:
            raise ConfigError(f"{where}[{i}].below: expected a tolerance > 0, got {tol!r}")
    return criterion


def success_fn(criterion: list[dict] | None) -> Callable[[dict], bool] | None:
    """obs -> bool for a (checked) criterion; None when the task declares none."""
    if criterion is None:
        return None
    terms = [(a, b, np.asarray(dims), float(tol)) for (a, b), dims, tol in
             ((t["distance"], t["dims"], t["below"]) for t in criterion)]

    def judge(obs: dict) -> bool:
        return all(float(np.linalg.norm(np.asarray(obs[a])[d] - np.asarray(obs[b])[d])) < tol
                   for a, b, d, tol in terms)

    return judge
