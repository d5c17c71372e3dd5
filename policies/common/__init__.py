"""Building blocks shared by every policy: normalizer, EMA, small layers."""

from policies.common.ema import EMA
from policies.common.normalizer import MissingStatsError, Normalizer

__all__ = ["EMA", "MissingStatsError", "Normalizer"]
