"""Timestamped action scheduling (diffusion_policy's eval_real_robot.py rule, shared/specs/stack_anchors.md §4a).

A policy inferred on an observation sampled at ``t_obs`` returns n actions (n = 1 for single-step policies,
Ta for chunk policies). Action i is the step that ends at ``t_obs + (i + 1) * dt``: applying it moves the target one
step, reached at that time. Actions whose end time is earlier than ``now + exec_latency`` are already in the past
(inference or transport ate their slot) and are dropped; when nothing is left, the last action is scheduled at the
next grid step ("over budget", counted). ``exec_latency`` is the latency compensation: the time a target needs from
here to the servo (default 10 ms, diffusion_policy's command latency budget).

Actions are deltas integrated into a TCP target (runtime/action_map.py), so a dropped action's motion is not lost
by skipping its slot only: callers integrate dropped actions too (``pop_due`` returns them), which keeps the
predicted path in space and only shifts its timing, like absolute waypoints in diffusion_policy.
"""

from __future__ import annotations

import collections

import numpy as np


class ActionScheduler:
    def __init__(self, dt_s: float, exec_latency_s: float = 0.010):
        self.dt_ns = int(round(dt_s * 1e9))
        self.latency_ns = int(round(exec_latency_s * 1e9))
        self._queue: collections.deque[tuple[int, np.ndarray]] = collections.deque()
        self.dropped = 0  # actions whose slot had passed
        self.over_budget = 0  # chunks with nothing left in the future

    def __len__(self) -> int:
        return len(self._queue)

    def clear(self) -> None:
        self._queue.clear()

    def load(self, actions: np.ndarray, t_obs_ns: int, now_ns: int) -> None:
        """Replace the schedule with a new chunk (n, Da) inferred on an observation sampled at t_obs_ns."""
        self._queue.clear()
        for i, a in enumerate(np.asarray(actions)):
            self._queue.append((t_obs_ns + (i + 1) * self.dt_ns, np.asarray(a, dtype=np.float64)))
        horizon = now_ns + self.latency_ns
        if self._queue and self._queue[-1][0] < horizon:  # all in the past: last action at the next grid step
            self.over_budget += 1
            last = self._queue[-1][1]
            self._queue.clear()
            self._queue.append((now_ns + self.dt_ns, last))

    def peek_due(self, now_ns: int) -> tuple[list[np.ndarray], np.ndarray] | None:
        """(dropped, action) as pop_due(now_ns) would return them, popping nothing; None when empty."""
        if not self._queue:
            return None
        horizon = now_ns + self.latency_ns
        n = 0
        while n < len(self._queue) - 1 and self._queue[n][0] < horizon:
            n += 1
        return [a for _, a in list(self._queue)[:n]], self._queue[n][1]

    def pop_due(self, now_ns: int) -> tuple[list[np.ndarray], np.ndarray, int] | None:
        """-> (dropped actions in order, the action to apply now, its target time), or None when empty."""
        horizon = now_ns + self.latency_ns
        dropped = []
        while len(self._queue) > 1 and self._queue[0][0] < horizon:
            dropped.append(self._queue.popleft()[1])
        self.dropped += len(dropped)
        if not self._queue:
            return None
        t, a = self._queue.popleft()
        return dropped, a, max(t, horizon)
