"""Episodes of the real-time controller against an arm server, saved to an episode store.

Shared by `robotstack deploy --record` / `record --arm` (robotstack/cli/deploy.py) and by the pipeline's collect
stage when its rollouts run on an arm (`collect.arm`, RL-100's outer round on the robot: rl100.md §4.6 rolls the
accepted policy out "in sim or on the robot"). The arm server is a separate process started by the user, as on a
robot: `robotstack serve-arm ...` for the PyBullet stand-in or a vendor driver.

What a recorded arm episode holds: per policy step the state observations (the same keys as sim recordings, so the
stores merge on them), the applied `action`, the raw `policy_action`, the targets sent, intervention flags and the
step's latencies (docs/runtime.md "Recording"). Success is the task's success rule evaluated by the controller on
the arm's state (robotstack/core/success.py), as in `deploy`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from robotstack.core import keys as K
from robotstack.core.errors import RobotstackError
from robotstack.eval.collect import CollectStats
from robotstack.runtime.controller import Controller, ControllerConfig, EpisodeResult


def save_episode(store, result: EpisodeResult, *, task: str, seed: int, control_hz: float,
                 policy_id: str) -> int | None:
    """Append one run to an EpisodeStore: every policy step with its measured capture time (state receive time),
    the applied action, the raw policy output, the targets, intervention flags and per-step latencies."""
    from robotstack.data.recorder import EpisodeRecorder

    f = result.frames
    if f is None:
        return None
    rec = EpisodeRecorder(store, control_hz=control_hz)
    rec.begin(source=result.source, task=task, seed=seed, policy_id=policy_id)
    n = len(f[K.ACTION])
    extra = {k: v for k, v in f.items() if k not in (K.ACTION, K.INTERVENTION)}
    for i in range(n):
        last = i == n - 1
        rec.add({k: v[i] for k, v in extra.items()}, f[K.ACTION][i], 0.0, bool(last and result.success),
                bool(last and not result.success), intervention=bool(f[K.INTERVENTION][i]),
                capture_time=float(f["step_times"][i][1]))
    return rec.save(success=result.success)


def run_controller(controller: Controller, *, episodes: int, duration_s: float | None, max_steps: int | None,
                   store=None, task: str = "", seed0: int = 0, policy_id: str | None = None,
                   print_fn: Callable[[str], None] = print) -> list[EpisodeResult]:
    """Episodes back to back; each is saved to ``store`` when given (policy_id: the artifact's own by default);
    stops at the first non-ok episode."""
    results = []
    for ep in range(episodes):
        pid = policy_id if policy_id is not None else controller._policy_id()
        try:
            res = controller.run_episode(duration_s=duration_s, max_steps=max_steps, reset=True, seed=seed0 + ep)
        except KeyboardInterrupt:
            res = getattr(controller, "_result", None)
            if res is not None and store is not None:
                save_episode(store, res, task=task, seed=seed0 + ep, control_hz=controller.spec.control_hz,
                             policy_id=pid)
            raise
        results.append(res)
        idx = None
        if store is not None and not (controller.human_only and res.stop_reason == "device_discard"):
            with controller.keep_alive():  # the arm server's watchdog keeps seeing us while the store commits
                idx = save_episode(store, res, task=task, seed=seed0 + ep, control_hz=controller.spec.control_hz,
                                   policy_id=pid)
        print_fn(f"\nepisode {ep + 1}/{episodes}: {res.steps} steps in {res.seconds:.1f} s, ended by "
                 f"{res.stop_reason}, success {res.success}, interventions {res.interventions}"
                 + (f", saved as episode {idx}" if idx is not None else ""))
        if not res.ok or controller.quit:
            break
    return results


def collect_on_arm(artifact: str | Path, arm: str, out: str | Path, episodes: int, *, policy_id: str, seed: int,
                   keys: str = "", max_steps: int | None = None, targets: str = "auto",
                   print_fn: Callable[[str], None] = print) -> CollectStats:
    """Run the exported policy ``artifact`` for ``episodes`` episodes on the arm server at ``arm`` and append every
    episode (successes and failures) to the store ``out`` with source="policy" and ``policy_id``. Episode i is
    recorded with seed seed + i (a label on an arm: the server picks its own scenes). Raises ArmUnavailable when
    the server does not answer, and RobotstackError when an episode ends with a stop (e-stop, a server fault):
    the episodes before it (and the stopped one) stay saved, so a second call collects the rest."""
    from robotstack.core.success import success_fn
    from robotstack.data.recording import open_or_create_store
    from robotstack.runtime.client import ArmClient
    from robotstack.runtime.policy_runner import PolicyRunner

    runner = PolicyRunner(artifact)
    client = ArmClient.at(arm, keys)
    ctl = Controller(client, runner, ControllerConfig(targets=targets), success_fn=success_fn(runner.spec.success))
    t0 = time.perf_counter()
    store = open_or_create_store(str(out), zarr_format=3)
    try:
        ctl.connect()
        results = run_controller(ctl, episodes=episodes, duration_s=None, max_steps=max_steps, store=store,
                                 task=runner.spec.task or "", seed0=seed, policy_id=policy_id, print_fn=print_fn)
    finally:
        store.close()
        client.close()
    if results and not results[-1].ok:
        raise RobotstackError(f"arm {arm}: episode {len(results)} of {episodes} ended by {results[-1].stop_reason}; "
                              f"collection stopped ({len(results)} episodes saved to {out})")
    return CollectStats(episodes=len(results), successes=sum(bool(r.success) for r in results),
                        frames=sum(r.steps for r in results), wall_s=time.perf_counter() - t0)
