import time

import pytest

from robotstack.core.timing import RateKeeper


def test_rate_keeper_holds_the_rate():
    rate = RateKeeper(200.0)
    t0 = time.monotonic()
    for _ in range(40):
        rate.wait()
    elapsed = time.monotonic() - t0
    assert rate.ticks >= 40
    # on the grid: 40 ticks plus any slots a busy machine made it skip (counted in ticks), no drift
    assert elapsed == pytest.approx(rate.ticks / 200.0, abs=0.01)
    assert rate.ticks - rate.skipped_ticks == 40


def test_late_tick_is_counted_and_skipped_not_caught_up():
    rate = RateKeeper(20.0)  # 50 ms period: the sleep overshoot of a busy machine stays a small part of it
    rate.wait()
    # wake 0.9 periods past a grid slot, ~4 slots missed: the slot after is only 0.1 period away
    time.sleep(max(0.0, rate.start + rate.period * (1 + 4.9) - time.monotonic()))
    assert rate.wait() is False
    assert rate.late_ticks == 1 and rate.skipped_ticks >= 4
    t0 = time.monotonic()
    rate.wait()  # the next tick is at least half a period away, not an immediate burst
    assert time.monotonic() - t0 > 0.3 * rate.period
    assert rate.late_ticks == 1


def test_bad_rate():
    with pytest.raises(ValueError, match="rate_hz"):
        RateKeeper(0)
