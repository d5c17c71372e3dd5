"""`robotstack deploy` and `robotstack record --arm`: the runtime controller against an arm server, plus recording.

Kept outside robotstack/runtime because it writes the episode store (robotstack.data), which the on-robot runtime
layer may not import; the control loop itself is robotstack.runtime.controller.

Best-of-N (`--best-of-n N`, issue 12): an artifact exported with `--critic` carries critic.onnx; each decision the
runtime samples N candidates in one batched policy call and executes the critic's argmax (robotstack/runtime/
artifact.py). Without the flag the artifact's own default (manifest critic.n; 1 without a critic) is used. N = 1 is
the plain path (one candidate, no critic call). The flag on an artifact without a critic is refused, N = 1 included:
asking for best-of-N from a plain artifact is a mistake to report, not to run silently; so is N < 1.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Callable

import numpy as np

from robotstack.eval.arm_collect import run_controller
from robotstack.runtime.controller import Controller, ControllerConfig, EpisodeResult
from robotstack.runtime.policy_runner import PolicyRunner

log = logging.getLogger("robotstack.cli.deploy")


def _status_printer(stream=sys.stderr) -> Callable[[str], None]:
    tty = stream.isatty()

    def show(line: str) -> None:
        stream.write(("\r" + line + "\x1b[K") if tty else line + "\n")
        stream.flush()

    return show


def final_table(results: list[EpisodeResult], telemetry, server_status=None) -> str:
    """One table per run: each episode (success, why it ended, interventions, safety events), totals with every
    safety event explained (limits apart from stops), latency percentiles and the server's own counters."""
    from robotstack.runtime.safety import event_kind

    lines = ["", "deploy: run summary",
             f"{'ep':>3} {'steps':>6} {'s':>6} {'success':>7} {'interv':>6}  {'ended by':<34} safety events"]
    for i, r in enumerate(results):
        ev = ", ".join(f"{k} {v}" for k, v in sorted(r.safety.items())) or "-"
        lines.append(f"{i + 1:>3} {r.steps:>6} {r.seconds:>6.1f} {str(r.success):>7} {r.interventions:>6}  "
                     f"{r.stop_reason[:34]:<34} {ev}")
    judged = [r.success for r in results if r.success is not None]
    total: dict[str, int] = {}
    for r in results:
        for k, v in r.safety.items():
            total[k] = total.get(k, 0) + v
    lines.append(f"success {sum(judged)}/{len(judged)} judged episodes; interventions "
                 f"{sum(r.interventions for r in results)}")
    for kind in ("stop", "limit", "info"):
        for k, v in sorted(total.items()):
            if event_kind(k)[0] == kind:
                lines.append(f"  {kind:5s} {k:22s} {v:6d}  {event_kind(k)[1]}")
    s = telemetry.summary()
    lines.append(f"latency (ms)         {'p50':>8} {'p99':>8} {'p99.9':>8} {'max':>8}      n")
    for k in ("state_to_target", "inference", "target_to_applied", "state_to_applied"):
        v = s["latency_ms"].get(k, {})
        if v.get("n"):
            lines.append(f"  {k:18s} {v['p50']:8.3f} {v['p99']:8.3f} {v['p999']:8.3f} {v['max']:8.3f} {v['n']:6d}")
    if server_status is not None:
        rej = ", ".join(f"{k} {v}" for k, v in sorted(server_status.rejects.items())) or "none"
        lines.append(f"server: mode {server_status.mode}, faults {server_status.faults or 'none'}, rejected "
                     f"frames: {rej}")
        lines.append(f"  {server_status.detail}")
    else:
        lines.append("server: no answer to a final heartbeat (its counters are unknown)")
    return "\n".join(lines)


class TallyRunner(PolicyRunner):
    """A PolicyRunner that counts which candidate row each best-of-N decision executed (for the run summary)."""

    def __init__(self, artifact_dir, best_of_n: int | None = None):
        self.choices: dict[int, int] = {}
        super().__init__(artifact_dir, best_of_n=best_of_n)
        self.choices = {}  # the constructor's warm-up decision does not count

    def infer(self) -> np.ndarray:
        out = super().infer()
        if self.artifact.n > 1:
            i = int(self.artifact.last_choice)
            self.choices[i] = self.choices.get(i, 0) + 1
        return out


def open_runner(artifact: str, best_of_n: int | None) -> TallyRunner:
    """The artifact at N candidates per decision; --best-of-n refused (naming it) when N < 1 or the artifact
    carries no critic, before anything connects to the arm."""
    from robotstack.core.errors import ConfigError
    from robotstack.core.manifest import read_manifest

    if best_of_n is not None:
        if best_of_n < 1:
            raise ConfigError(f"deploy --best-of-n {best_of_n}: expected N >= 1 (1 = plain: one candidate, no critic "
                              "call)")
        if read_manifest(artifact).critic is None:
            raise ConfigError(f"deploy --best-of-n {best_of_n}: artifact {artifact} has no critic section (no "
                              "critic.onnx); export it with `robotstack export --critic SCORER_DIR`, or deploy "
                              "it without --best-of-n")
    return TallyRunner(artifact, best_of_n=best_of_n)


def best_of_n_line(runner: TallyRunner) -> str:
    """What the decisions were: plain, or N candidates with the executed rows counted."""
    art = runner.artifact
    c = art.manifest.critic
    if art.n == 1:
        return "decisions: plain (1 candidate per decision" + (", critic not used)" if c else ")")
    total = sum(runner.choices.values())
    rows = " ".join(f"{i}:{k}" for i, k in sorted(runner.choices.items())) or "-"
    return (f"decisions: best-of-{art.n} ({total} decisions; critic.onnx scored the first {c['h_a']} executed "
            f"actions, {c['aggregate']} over the ensemble); executed candidate rows {rows}")


def deploy(args) -> int:
    from robotstack.runtime.client import ArmClient
    from robotstack.runtime.safety import SafetyConfig
    from robotstack.runtime.terminal import TerminalEStop

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.cpus:  # before onnxruntime's and libzmq's threads exist, so they inherit it
        from robotstack.core.timing import pin_cpus

        try:
            pin_cpus(args.cpus)
        except ValueError as e:
            print(f"deploy: {e}", file=sys.stderr)
            return 2
    best_of_n = args.best_of_n
    runner = open_runner(args.artifact, best_of_n)
    client = ArmClient.at(args.arm, args.keys, robot_id=args.robot_id)
    takeover = None
    if args.takeover:
        from hardware.teleop import make_device

        takeover = make_device(args.takeover)
    cfg = ControllerConfig(command_hz=args.command_hz, target_expiry_s=args.target_expiry, targets=args.targets,
                           rehearse_lead_s=max(0.0, args.rehearse_ms) * 1e-3,
                           safety=SafetyConfig(max_delta=None if args.max_delta <= 0 else args.max_delta))
    from robotstack.core.success import success_fn

    ctl = Controller(client, runner, cfg, takeover=takeover, success_fn=success_fn(runner.spec.success),
                     status_fn=None if args.quiet else _status_printer())
    store = None
    if args.record:
        from robotstack.data.recording import open_or_create_store

        store = open_or_create_store(args.record, zarr_format=3)
    keys_reader = None
    if args.takeover != "keyboard" and TerminalEStop.available():
        keys_reader = TerminalEStop(ctl.request_estop).start()
        print("e-stop: space, e or Esc (Ctrl-C also sends an e-stop before exiting)", file=sys.stderr)

    def reload(*_):  # SIGHUP: load the artifact dir again and hot-swap to it without stopping the loop
        def work():
            try:
                ctl.request_swap(open_runner(args.artifact, best_of_n))  # the same N (and its checks)
                print(f"\nhot swap: reloaded {args.artifact}", file=sys.stderr)
            except Exception as e:  # noqa: BLE001 - report and keep running the old policy
                print(f"\nhot swap refused: {e}", file=sys.stderr)
        threading.Thread(target=work, daemon=True).start()

    signal.signal(signal.SIGHUP, reload)
    signal.signal(signal.SIGTERM, lambda *_: ctl.request_estop("SIGTERM"))
    code = 0
    results: list[EpisodeResult] = []
    try:
        ctl.connect()
        spec = runner.spec
        print(f"deploy: {spec.policy_id} (To={spec.n_obs_steps}, Ta={spec.n_action_steps}, {spec.control_hz:g} Hz) on "
              f"{args.arm}; event-driven loop, {ctl.targets} targets, re-sent at {args.command_hz:g} Hz; "
              f"{'plain' if runner.artifact.n == 1 else f'best-of-{runner.artifact.n}'}", file=sys.stderr)
        results = run_controller(ctl, episodes=args.episodes, duration_s=args.duration or None,
                                 max_steps=args.max_steps or None, store=store, task=spec.task or "deploy",
                                 seed0=args.seed)
        code = 0 if all(r.ok for r in results) else 3
        judged = [r.success for r in results if r.success is not None]
        if judged:
            print(f"deploy: task success {sum(judged)}/{len(judged)} episodes on {args.arm}", file=sys.stderr)
        if results and not results[-1].ok:
            print(f"deploy: stopped: {results[-1].stop_reason}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ndeploy: Ctrl-C: e-stop sent", file=sys.stderr)
        code = 130
    finally:
        if keys_reader is not None:
            keys_reader.close()
        if takeover is not None:
            takeover.close()
        try:
            server_status = client.heartbeat(timeout_s=0.3)
        except Exception:  # noqa: BLE001 - the table says the server did not answer
            server_status = None
        print(final_table(results, ctl.telemetry, server_status), file=sys.stderr)
        print(best_of_n_line(ctl.policy if isinstance(ctl.policy, TallyRunner) else runner), file=sys.stderr)
        if store is not None:
            store.close()
        client.close()
    return code


def record_arm(args) -> int:
    """A person drives the arm server's arm through the controller's plumbing; episodes land in the store."""
    import sim
    from hardware.teleop import make_device
    from hardware.teleop.keyboard import HELP
    from robotstack.data.recording import open_or_create_store
    from robotstack.runtime.client import ArmClient
    from robotstack.runtime.controller import teleop_spec

    spec = teleop_spec(sim.make(args.task).unwrapped.task_spec())
    client = ArmClient.at(args.arm, args.keys)
    device = make_device(args.device)
    ctl = Controller(client, None, ControllerConfig(), spec=spec, takeover=device, human_only=True,
                     status_fn=_status_printer())
    store = open_or_create_store(args.out, zarr_format=args.zarr_format)
    print(HELP + "\nEnter saves the episode (the next starts at once); Q quits", file=sys.stderr)
    try:
        ctl.connect()
        results = run_controller(ctl, episodes=args.episodes, duration_s=None, max_steps=args.max_steps or 400,
                                 store=store, task=args.task, seed0=args.seed)
    finally:
        device.close()
        store.close()
        client.close()
    print(f"saved {len(results)} episodes to {args.out}")
    return 0
