"""Wilson interval maths and episode summaries."""

from __future__ import annotations

import math

import pytest

from robotstack.eval.metrics import EpisodeResult, summarize, wilson_interval


@pytest.mark.parametrize("k,n,lo,hi", [
    (0, 10, 0.0, 0.27753), (5, 10, 0.23659, 0.76341), (10, 10, 0.72247, 1.0),
    (81, 100, 0.72221, 0.87485), (1, 20, 0.00889, 0.23613),
])
def test_wilson_interval_reference_values(k, n, lo, hi):
    # reference values computed by hand from the closed form (z = 1.95996), 5 decimals
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=1e-5) and got[1] == pytest.approx(hi, abs=1e-5)


def test_wilson_interval_properties():
    for n in (1, 7, 100):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
    # symmetric: k successes vs n-k failures
    lo, hi = wilson_interval(3, 17)
    lo2, hi2 = wilson_interval(14, 17)
    assert lo == pytest.approx(1 - hi2) and hi == pytest.approx(1 - lo2)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_summarize():
    eps = [EpisodeResult(0, 10, True, 20, 1.0), EpisodeResult(1, 11, False, 50, 0.0),
           EpisodeResult(2, 12, True, 30, 1.0)]
    s = summarize(eps)
    assert s["episodes"] == 3 and s["successes"] == 2 and s["success_rate"] == pytest.approx(2 / 3)
    assert s["mean_length"] == pytest.approx(100 / 3) and s["mean_length_success"] == 25
    assert (s["ci95_low"], s["ci95_high"]) == wilson_interval(2, 3)
    assert eps[0].to_json() == {"episode": 0, "seed": 10, "success": True, "length": 20, "return": 1.0}
    assert not math.isnan(summarize([])["success_rate"])
