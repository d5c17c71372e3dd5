"""Per-step latency telemetry: state sampled -> received -> inference done -> target sent -> applied by the server.

One row per policy step, all on the controller's clock (server times are mapped with the client's clock-offset
estimate; on one host the offset is 0):

    t_state     the arm sampled the joint state (RobotState.state_time_ns)
    t_recv      the controller received that state
    t_infer     the policy (or the teleop device) produced the action
    t_sent      the first target of this step left the controller
    t_applied   the server first commanded it (RobotState.last_target_applied_ns for that target's seq)

Derived: state->target (t_sent - t_state, the controller's deadline), inference (t_infer - t_recv), target->applied
(t_applied - t_sent), state->applied. A deadline miss is a step whose state->target latency exceeds ``deadline_s``
(default 10 ms: diffusion_policy's command latency budget); loop lateness comes from the RateKeeper.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

COLS = ("t_state", "t_recv", "t_infer", "t_sent", "t_applied")


def pct(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"n": 0}
    p = np.percentile(x, [50, 99, 99.9])
    return {"n": int(len(x)), "p50": float(p[0]), "p99": float(p[1]), "p999": float(p[2]), "max": float(x.max()),
            "mean": float(x.mean())}


@dataclass
class Telemetry:
    deadline_s: float = 0.010
    capacity: int = 1_000_000
    rows: np.ndarray = field(init=False)
    n: int = 0
    loop_periods_ns: list = field(default_factory=list)
    late_ticks: int = 0
    deadline_misses: int = 0
    safety: dict = field(default_factory=dict)
    interventions: int = 0
    ik_ahead: int = 0  # steps whose IK was computed ahead, off the state->target path (action_map.prepare)
    ik_on_step: int = 0  # steps that ran IK between state arrival and target send
    _seq_row: dict = field(default_factory=dict)  # first target seq of a step -> row
    _last_tick_ns: int | None = None
    _t0: float = field(default_factory=time.monotonic)

    def __post_init__(self):
        self.rows = np.full((1024, len(COLS)), np.nan)

    def begin_step(self, t_state: int, t_recv: int, t_infer: int) -> int:
        if self.n >= len(self.rows):
            self.rows = np.concatenate([self.rows, np.full_like(self.rows, np.nan)])
        i = self.n
        self.rows[i, :3] = (t_state, t_recv, t_infer)
        self.n += 1
        return i

    def sent(self, row: int, seq: int | None, t_sent: int) -> None:
        self.rows[row, 3] = t_sent
        if t_sent - self.rows[row, 0] > self.deadline_s * 1e9:
            self.deadline_misses += 1
        if seq is not None:
            self._seq_row[seq] = row
            if len(self._seq_row) > 256:
                for k in sorted(self._seq_row)[:128]:
                    del self._seq_row[k]

    def applied(self, seq: int | None, t_applied: int | None) -> None:
        """Called with every state's last-target echo; fills the row whose first target it is."""
        if seq is None or t_applied is None:
            return
        row = self._seq_row.pop(seq, None)
        if row is not None:
            self.rows[row, 4] = t_applied

    def tick(self, now_ns: int, on_time: bool) -> None:
        if self._last_tick_ns is not None:
            self.loop_periods_ns.append(now_ns - self._last_tick_ns)
            if len(self.loop_periods_ns) > 2_000_000:
                del self.loop_periods_ns[:1_000_000]
        self._last_tick_ns = now_ns
        self.late_ticks += int(not on_time)

    def latencies_ms(self, last: int | None = None) -> dict[str, np.ndarray]:
        r = self.rows[: self.n] if last is None else self.rows[max(0, self.n - last): self.n]
        ms = 1e-6
        return {"state_to_recv": (r[:, 1] - r[:, 0]) * ms, "inference": (r[:, 2] - r[:, 1]) * ms,
                "state_to_target": (r[:, 3] - r[:, 0]) * ms, "target_to_applied": (r[:, 4] - r[:, 3]) * ms,
                "state_to_applied": (r[:, 4] - r[:, 0]) * ms}

    def summary(self) -> dict:
        lat = {k: pct(v) for k, v in self.latencies_ms().items()}
        periods = np.asarray(self.loop_periods_ns, dtype=np.float64) * 1e-6
        return {"steps": self.n, "latency_ms": lat, "loop_period_ms": pct(periods),
                "loop_rate_hz": float(1e3 / periods.mean()) if len(periods) else 0.0,
                "late_ticks": self.late_ticks, "deadline_misses": self.deadline_misses,
                "deadline_ms": self.deadline_s * 1e3, "safety_events": dict(self.safety),
                "interventions": self.interventions, "ik_ahead": self.ik_ahead, "ik_on_step": self.ik_on_step,
                "applied_unmatched": int(np.isnan(self.rows[: self.n, 4]).sum())}

    def status_line(self, extra: str = "") -> str:
        lat = self.latencies_ms(last=200)
        per = np.asarray(self.loop_periods_ns[-500:], dtype=np.float64)
        rate = 1e9 / per.mean() if len(per) else 0.0
        s2t, s2a = pct(lat["state_to_target"]), pct(lat["state_to_applied"])
        safety = sum(self.safety.values())
        return (f"loop {rate:6.1f} Hz | state->target p99 {s2t.get('p99', float('nan')):5.2f} ms | state->applied "
                f"p99 {s2a.get('p99', float('nan')):5.2f} ms | deadline misses {self.deadline_misses} | late ticks "
                f"{self.late_ticks} | safety {safety} | interventions {self.interventions}" + (f" | {extra}" if extra
                                                                                           else ""))

    def format_summary(self) -> str:
        s = self.summary()
        lines = [f"steps {s['steps']}, loop {s['loop_rate_hz']:.1f} Hz, late ticks {s['late_ticks']}, deadline misses "
                 f"{s['deadline_misses']} (> {s['deadline_ms']:.0f} ms state->target), safety {s['safety_events']}, "
                 f"interventions {s['interventions']}"]
        for k, v in s["latency_ms"].items():
            if v.get("n"):
                lines.append(f"  {k:18s} p50 {v['p50']:7.3f}  p99 {v['p99']:7.3f}  max {v['max']:7.3f} ms  (n={v['n']})")
        return "\n".join(lines)
