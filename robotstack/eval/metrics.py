"""Success statistics of a batch of evaluation episodes (numpy / stdlib only).

The 95% interval is Wilson's score interval, which stays inside [0, 1] and is sensible at 0/n and n/n,
unlike the normal approximation p +- 1.96 sqrt(p(1-p)/n) (which collapses to a zero-width interval there).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n == 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact bounds at 0/n and n/n (no round-off)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


@dataclass
class EpisodeResult:
    episode: int
    seed: int
    success: bool
    length: int  # env steps taken
    ret: float  # sum of rewards

    def to_json(self) -> dict:
        d = asdict(self)
        d["return"] = d.pop("ret")
        return d


def summarize(episodes: list[EpisodeResult]) -> dict:
    """success_rate, its 95% Wilson interval, mean length / return (and over successes only)."""
    n = len(episodes)
    k = sum(e.success for e in episodes)
    lo, hi = wilson_interval(k, n)
    lengths = [e.length for e in episodes]
    ok_lengths = [e.length for e in episodes if e.success]
    return {"episodes": n, "successes": k, "success_rate": k / n if n else 0.0, "ci95_low": lo, "ci95_high": hi,
            "mean_length": float(sum(lengths) / n) if n else 0.0,
            "mean_length_success": float(sum(ok_lengths) / len(ok_lengths)) if ok_lengths else None,
            "mean_return": float(sum(e.ret for e in episodes) / n) if n else 0.0}
