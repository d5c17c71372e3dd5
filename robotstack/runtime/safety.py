"""Controller-side safety: checks on every policy output and on the arm state, on by default.

    check_output   NaN/Inf anywhere, or |a| beyond ``abs_max`` -> SafetyStop (the controller holds and stops)
    limit_change   max change of the motion dims per policy step (``max_delta``): a jump is spread over steps
    state watchdog no new state for ``state_timeout_s`` -> SafetyStop (the controller stops, the server holds)

The arm server's ServoCore keeps its own hard limits (joint range, velocity, workspace box): this layer is the
policy-facing one, not the last line of defence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from robotstack.core.errors import RobotstackError


# what each event code means, for the final report: a "limit" shaped an action and the run went on; a "stop"
# ended the episode; "info" is bookkeeping. Limits during a normal run are expected (a reach policy's first
# step from rest often changes by more than max_delta), so they are reported apart from stops.
EVENT_KINDS = {
    "max_change_limited": ("limit", "policy action changed by more than max_delta in one step; spread over steps"),
    "nonfinite_output": ("stop", "policy produced NaN/Inf"),
    "out_of_range_output": ("stop", "policy output beyond abs_max"),
    "state_stale": ("stop", "no arm state within state_timeout_s"),
    "server_stop": ("stop", "the arm server was in STOP (e-stop, heartbeat lost)"),
    "estop": ("stop", "operator e-stop (key, Ctrl-C, SIGTERM)"),
    "hot_swap": ("info", "policy reloaded (SIGHUP)"),
    "takeover_end": ("info", "a person handed back control; the policy's warm start (RTI) was reset"),
}


def event_kind(code: str) -> tuple[str, str]:
    return EVENT_KINDS.get(code, ("stop", code))


class SafetyStop(RobotstackError):
    """The controller must hold and stop. ``code`` is a short name for logs and telemetry."""

    def __init__(self, code: str, detail: str):
        self.code, self.detail = code, detail
        super().__init__(f"{code}: {detail}")


@dataclass
class SafetyConfig:
    abs_max: float = 1.05  # policy outputs beyond this (env actions live in [-1, 1]) are a fault, not clipped
    max_delta: float | None = 0.5  # max change of each motion dim per policy step (None = off; default on)
    state_timeout_s: float = 0.1  # no new arm state for this long -> stop


@dataclass
class Safety:
    cfg: SafetyConfig = field(default_factory=SafetyConfig)
    events: dict[str, int] = field(default_factory=dict)  # code -> count (limits applied, stops)
    _prev: np.ndarray | None = None

    def count(self, code: str) -> None:
        self.events[code] = self.events.get(code, 0) + 1

    def check_output(self, actions: np.ndarray, where: str = "policy") -> np.ndarray:
        a = np.asarray(actions)
        if not np.all(np.isfinite(a)):
            self.count("nonfinite_output")
            raise SafetyStop("nonfinite_output", f"{where} output contains NaN/Inf: {np.round(a, 3).tolist()}")
        if np.any(np.abs(a) > self.cfg.abs_max):
            self.count("out_of_range_output")
            raise SafetyStop("out_of_range_output", f"{where} output {np.round(a, 3).tolist()} outside "
                                                    f"[-{self.cfg.abs_max}, {self.cfg.abs_max}]")
        return np.clip(a, -1.0, 1.0)

    def preview_changes(self, actions: list[np.ndarray]) -> list[np.ndarray]:
        """What limit_change would return for these actions in turn, without counting or remembering (IK ahead)."""
        prev, out = self._prev, []
        for action in actions:
            a = np.asarray(action, dtype=np.float64).copy()
            if self.cfg.max_delta is not None and prev is not None:
                d = self.cfg.max_delta
                a[:-1] = np.clip(a[:-1], prev[:-1] - d, prev[:-1] + d)
            out.append(a)
            prev = a
        return out

    def limit_change(self, action: np.ndarray) -> np.ndarray:
        """Bound the change of the motion dims (all but the last, the gripper) from the previous applied action."""
        a = np.asarray(action, dtype=np.float64).copy()
        if self.cfg.max_delta is not None and self._prev is not None:
            d = self.cfg.max_delta
            lim = np.clip(a[:-1], self._prev[:-1] - d, self._prev[:-1] + d)
            if np.any(lim != a[:-1]):
                self.count("max_change_limited")
            a[:-1] = lim
        self._prev = a.copy()
        return a

    def reset(self) -> None:
        self._prev = None

    def check_state_age(self, age_s: float) -> None:
        if age_s > self.cfg.state_timeout_s:
            self.count("state_stale")
            raise SafetyStop("state_stale", f"no new arm state for {age_s * 1e3:.0f} ms (limit "
                                            f"{self.cfg.state_timeout_s * 1e3:.0f} ms): arm server down or network lost")
