"""Fixed-rate loop timing: absolute deadlines, hybrid sleep + spin wait, skip (never catch up) when late.

machine_notes.md §8: pure sleep loops on these VMs see 1-8 ms wake-up outliers; sleeping until ~200 us before
the deadline and spinning the rest holds p99 jitter in the tens of microseconds. A tick that wakes more than
`late_tolerance` after its deadline is counted as late and the grid is re-anchored instead of firing a burst of
catch-up ticks: the slots slept through are skipped, and so is the next one when it is under half a period away
(a late tick followed 0.3 ms later by the next one would be a two-tick burst; CI caught that case).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class RateKeeper:
    rate_hz: float
    spin_s: float = 200e-6  # spin the last 200 us: cheap insurance against a late wake-up
    late_tolerance_s: float | None = None  # default: half a period
    start: float = field(default_factory=time.monotonic)
    ticks: int = 0
    late_ticks: int = 0
    skipped_ticks: int = 0

    def __post_init__(self) -> None:
        if self.rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0, got {self.rate_hz}")
        self.period = 1.0 / self.rate_hz
        if self.late_tolerance_s is None:
            self.late_tolerance_s = 0.5 * self.period
        self._next = self.start

    def reset(self) -> None:
        self.start = time.monotonic()
        self._next = self.start
        self.ticks = self.late_ticks = self.skipped_ticks = 0

    def nominal_time(self) -> float:
        """Grid time of the current tick, seconds since start."""
        return self.ticks * self.period

    def wait(self) -> bool:
        """Block until the next grid slot. Returns False when this tick was late (woke past tolerance)."""
        self._next += self.period
        now = time.monotonic()
        remaining = self._next - now
        if remaining > self.spin_s:
            time.sleep(remaining - self.spin_s)
        while time.monotonic() < self._next:
            pass
        self.ticks += 1
        lateness = time.monotonic() - self._next
        on_time = lateness <= self.late_tolerance_s
        if not on_time:
            self.late_ticks += 1
            # skip the slots slept through, rounding so the next tick is 0.5-1.5 periods from now (never a burst)
            missed = int(lateness / self.period + 0.5)
            if missed:
                self.skipped_ticks += missed
                self.ticks += missed
                self._next += missed * self.period
        return on_time


def monotonic_ns() -> int:
    return time.monotonic_ns()


def parse_cpus(spec: str) -> set[int]:
    """"0", "2,3", "0-1,3" -> a set of CPU ids; ValueError naming the bad part."""
    cpus: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"--cpus {spec!r}: {part!r} is not a CPU id or a range like 2-3") from None
        if a < 0 or b < a:
            raise ValueError(f"--cpus {spec!r}: {part!r} is not a CPU id or a range like 2-3")
        cpus.update(range(a, b + 1))
    return cpus


def usable_cpus(spec: str) -> set[int]:
    """parse_cpus, and refuse CPUs this process may not use (ValueError naming them)."""
    import os

    want, allowed = parse_cpus(spec), os.sched_getaffinity(0)
    if not want <= allowed:
        raise ValueError(f"--cpus {spec!r}: CPUs {sorted(want - allowed)} are not available "
                         f"(this process may use {sorted(allowed)})")
    return want


def pin_cpus(spec: str) -> set[int]:
    """Pin this process (and the threads it starts after this call: libzmq's I/O thread, onnxruntime's pool) to
    the CPUs in ``spec`` (usable_cpus). Keeping the arm server's servo loop and the controller on different cores
    stops the SCHED_FIFO servo thread from preempting the controller between state arrival and target send
    (measured in bench_control.py --pin)."""
    import os

    want = usable_cpus(spec)
    os.sched_setaffinity(0, want)
    return want
