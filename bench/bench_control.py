"""On-robot controller benchmark: arm server (PyBullet Panda, 1 kHz) and controller as separate processes on loopback.

    python bench/bench_control.py [--seconds 60] [--push-episodes 20]
    python bench/bench_control.py --ort-knobs            # onnxruntime session options, side by side
    python bench/bench_control.py --soak-seconds 600     # soak: CURVE controller + idle client + fuzzer
    python bench/bench_control.py --kinematic [--pin] [--cartesian]  # phase 1 again on the physics-free arm
    python bench/bench_control.py [--pin] [--ipc]    # phase 1 again, side by side: pinned CPUs / ipc:// transport
    python bench/bench_control.py --driver kinematic --push-episodes 0 [--targets cartesian]  # no pybullet needed

Phase 1 (timing + reach success): `robotstack serve-arm --driver pybullet --task reach` and a controller process
(this file with --worker) that runs an exported ONNX policy for >= --seconds, episodes back to back.
The policy is `robotstack.export.tiny.export_tiny` — a tiny UNTRAINED DiffusionPolicy (DDIM-2) written by the real
exporter (timing of the production artifact path; its reach success is not meaningful; phase 1b runs a trained
checkpoint when runs/bench_il/reach_run exists, or pass --policy-artifact). Reported: servo period
p50/p99/p99.9/max and late ticks (server), state->target / inference / target->applied latency (controller
telemetry), CPU use of both processes, and reach success vs the same ONNX policy in the MuJoCo env (same seeds).
Phase 2 (push): the sim's scripted push expert through the same runtime path (controller -> ZMQ -> servo ->
PyBullet) vs the same expert in MuJoCo — a physics-transfer check of the path, labelled as a scripted expert.
Published references printed beside: polymetis loop latency (avg 0.22 ms, max 4.1 ms, Joint PD, mock Franka),
diffusion_policy's 125 Hz RTDE loop and deoxys' 500 Hz interpolation loop.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.common import print_table, write_results  # noqa: E402

PY = sys.executable


def task_spec(task: str) -> dict:
    import sim

    env = sim.make(task)
    try:
        return env.unwrapped.task_spec()
    finally:
        env.close()


def success_fn(task: str):
    from robotstack.core.success import success_fn as judge

    fn = judge(task_spec(task)["success"])  # the criterion the exporter writes into manifests
    if fn is None:
        raise ValueError(f"no state-only success criterion for task {task!r}")
    return fn


class ExpertPolicy:
    """The sim's scripted expert behind the runtime's policy interface (reads only the observation dict)."""

    def __init__(self, task: str):
        import sim
        from robotstack.runtime.controller import teleop_spec

        self.env = sim.make(task)
        self.expert = sim.make_expert(self.env, noise=0.0, seed=0)
        self.spec = teleop_spec(self.env.unwrapped.task_spec())
        self.spec.policy_id = f"scripted_expert_{task}"
        self.obs = None

    def reset(self):
        self.expert.reset()

    def push(self, obs):
        self.obs = obs

    def infer(self):
        return np.asarray(self.expert.act(self.obs), dtype=np.float64)[None]


# --- the controller process ---------------------------------------------------------------------------------------
def worker(args) -> None:
    from hardware.protocol import parse_bind
    from robotstack.runtime.client import ArmClient
    from robotstack.runtime.controller import Controller, ControllerConfig
    from robotstack.runtime.policy_runner import PolicyRunner

    from hardware.protocol import load_client_keys

    if args.cpus:
        from robotstack.core.timing import pin_cpus

        pin_cpus(args.cpus)
    policy = PolicyRunner(args.artifact) if args.artifact else ExpertPolicy(args.task)
    keys = load_client_keys(args.keys) if args.keys else None
    ctl = Controller(ArmClient(parse_bind(args.arm), keys), policy, ControllerConfig(targets=args.targets),
                     success_fn=success_fn(args.task))
    ctl.connect()
    t0 = time.monotonic()
    eps = []
    while (time.monotonic() - t0 < args.seconds or len(eps) < args.min_episodes) and len(eps) < args.max_episodes:
        res = ctl.run_episode(max_steps=args.max_steps)
        eps.append({"seed": args.seed0 + len(eps) + 1, "success": bool(res.success), "steps": res.steps,
                    "reason": res.stop_reason, "ok": res.ok})
        if not res.ok:
            break
    try:
        final = ctl.client.heartbeat(timeout_s=1.0)
        server = {"rejects": final.rejects, "faults": final.faults, "mode": final.mode, "detail": final.detail}
    except Exception as e:  # noqa: BLE001 - reported as such
        server = {"error": str(e)}
    Path(args.out).write_text(json.dumps({"episodes": eps, "telemetry": ctl.telemetry.summary(),
                                          "seconds": time.monotonic() - t0, "server_status": server}, default=float))


# --- MuJoCo reference -----------------------------------------------------------------------------------------------
def mujoco_success(task: str, seeds: list[int], artifact: str | None, max_steps: int) -> list[bool]:
    import sim
    from robotstack.runtime.policy_runner import PolicyRunner

    env = sim.make(task, max_episode_steps=max_steps)
    out = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        pol = PolicyRunner(artifact) if artifact else ExpertPolicy(task)
        pol.reset()
        ok, queue = False, []
        for _ in range(max_steps):  # like the runtime: push every step, infer when the chunk (Ta) is used up
            pol.push(obs)
            if not queue:
                queue = list(pol.infer())
            obs, _, term, trunc, info = env.step(queue.pop(0))
            if info["is_success"]:
                ok = True
                break
            if trunc:
                break
        out.append(ok)
    return out


def rusage_wait(proc: subprocess.Popen, timeout: float) -> tuple[int, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru.ru_utime + ru.ru_stime
        time.sleep(0.05)
    proc.kill()
    _, status, ru = os.wait4(proc.pid, 0)
    return -9, ru.ru_utime + ru.ru_stime


def run_phase(task: str, seconds: float, artifact: str | None, min_eps: int, max_eps: int, max_steps: int,
              tmp: Path, port: int, keys: Path | None = None, during=None, pin: bool = False,
              targets: str = "joint", servo: str = "", driver: str = "pybullet", seed0: int = 1000,
              transport: str = "tcp") -> dict:
    """Server + controller worker processes; ``keys``: CURVE on (server dir with clients/); ``during(addr)``:
    runs in this process while the worker does (the soak's idle and fuzzing clients) and returns a dict.
    ``pin``: server on CPU 0 (`serve-arm --cpus 0`), controller on CPU 1 (`deploy --cpus 1` does the same).
    ``targets``: the controller's target kind ("cartesian": the server's servo solves IK); ``servo``: serve-arm
    --servo JSON (servo limits; "" = the defaults); ``driver``: serve-arm --driver ("kinematic": the physics-free
    mock arm, so the servo tick carries no physics step); ``seed0``: the episodes run on the scenes of seeds
    seed0 + 1, seed0 + 2, ...; ``transport``: "tcp" (loopback, the default) or "ipc" (Unix sockets under tmp,
    `serve-arm --bind ipc://DIR`: a controller on the server's own host)."""
    addr = f"tcp://127.0.0.1:{port}" if transport == "tcp" else f"ipc://{tmp}/arm_{port}"
    stats_path, out_path = tmp / f"server_{task}.json", tmp / f"worker_{task}.json"
    srv = subprocess.Popen([PY, "-m", "robotstack.cli", "serve-arm", "--driver", driver, "--task", task, "--bind",
                            addr, "--seed", str(seed0), "--scenes", str(max_eps + 2), "--stats-out", str(stats_path)]
                           + (["--keys", str(keys)] if keys else []) + (["--cpus", "0"] if pin else [])
                           + (["--servo", servo] if servo else []),
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in srv.stdout:
        if "ready" in line:
            break
    t_start = time.monotonic()
    wk = subprocess.Popen([PY, __file__, "--worker", "--task", task, "--arm", addr, "--out", str(out_path),
                           "--seconds", str(seconds), "--min-episodes", str(min_eps), "--max-episodes", str(max_eps),
                           "--max-steps", str(max_steps), "--seed0", str(seed0)] + (["--artifact", artifact]
                                                                                     if artifact else [])
                          + (["--keys", str(keys)] if keys else []) + (["--cpus", "1"] if pin else [])
                          + ["--targets", targets], cwd=ROOT)
    try:
        side = during(addr, wk) if during is not None else None
        rc, wk_cpu = rusage_wait(wk, seconds + max_eps * max_steps / 20 + 120)
        wall = time.monotonic() - t_start
    finally:  # never leave a server running behind a failed run
        srv.terminate()
        _, srv_cpu = rusage_wait(srv, 15)
    if rc != 0:
        raise RuntimeError(f"controller worker for {task} exited {rc}")
    res = json.loads(out_path.read_text())
    res["server"] = json.loads(stats_path.read_text())
    res["cpu"] = {"server_core_fraction": srv_cpu / wall, "controller_core_fraction": wk_cpu / wall, "wall_s": wall}
    res["side"] = side
    res["driver"] = driver
    return res


# --- onnxruntime session options, measured side by side ----------------------------------------------------------
def _path_items(runner) -> dict:
    """The rest of what can sit between state arrival and target send, timed beside inference: decoding the state
    frame, IK on the step (8 iterations, warm start one step away) vs IK computed ahead (the step only checks the
    plan's inputs and copies it), encoding the joint target."""
    from hardware.protocol import messages as m
    from robotstack.core import kinematics as kin
    from robotstack.runtime.action_map import EEActionMapper

    q0 = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.8])
    z = np.zeros(7)
    frame = m.RobotState(q0, z, 1, "servo", False, z, np.zeros(1), np.zeros(3), np.array([1.0, 0, 0, 0]),
                         np.zeros(7), np.zeros(3), None, 5, 6, 7).to_bytes("arm", 1, 1)
    tcp = kin.forward_kinematics(q0)[2]
    a = np.array([0.5, -0.3, 0.2, -1.0])
    mapper = EEActionMapper(runner.spec.action_scale())

    a_far = np.array([1.0, 1.0, -1.0, -1.0])  # 3.5 cm a step: after two, the max-lead clamp (4 cm) binds
    tcp_moved = tcp + np.array([0.003, -0.002, 0.001])  # the TCP measured at the step, 4 mm from the one planned with

    def ik(ahead: bool, missed: bool = False):
        mapper.reset(q0, 0.04)
        act = a_far if missed else a
        if missed:  # the target already leads the hand by 3.5 cm
            mapper.advance(a_far, tcp)
        if ahead:
            mapper.prepare([], act, tcp)  # done after the previous send, not timed here
        t = time.perf_counter_ns()
        mapper.step(act, tcp_moved if missed else tcp)
        return time.perf_counter_ns() - t

    return {"state frame decode (msgpack + validation)": lambda: m.decode(frame, robot_id="arm"),
            "IK on the step (8 iters)": lambda: ik(False), "IK ahead: plan check + copy": lambda: ik(True),
            "IK ahead missed (the clamp moved the target): IK on the step": lambda: ik(True, missed=True),
            "joint target encode": lambda: m.JointTarget(q0, 1, 2).to_bytes("arm", 1, 0)}


def ort_knobs(runs: int = 3000) -> dict:
    """Per-call latency of the reach policy's ONNX graph under session options, interleaved round-robin so machine
    noise hits every variant alike. The runtime (artifact.open_session + its _Bound buffers) is the last two rows:
    the bare bound graph, and the whole PolicyRunner.infer call (history, noise, run, output copy)."""
    import onnxruntime as ort

    from robotstack.export.tiny import export_tiny
    from robotstack.runtime.policy_runner import PolicyRunner

    with tempfile.TemporaryDirectory() as td:
        runner = PolicyRunner(export_tiny(Path(td) / "p", task_spec("reach")))
        art = runner.artifact
        path = str(art.path / art.manifest.graphs["policy"]["file"])
        sess0 = art.sessions["policy"]
        feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape],
                                 dtype=np.float32 if "float" in i.type else np.int64) for i in sess0.get_inputs()}

        def make(intra=1, spin=None, seq=True, opt=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = intra, 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL if seq else ort.ExecutionMode.ORT_PARALLEL
            so.graph_optimization_level = opt
            if spin is not None:
                so.add_session_config_entry("session.intra_op.allow_spinning", spin)
            return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

        variants = {
            "1 thread, session.run (runtime before)": make(),
            "2 threads": make(intra=2),
            "2 threads, no spinning": make(intra=2, spin="0"),
            "1 thread, no spinning": make(spin="0"),
            "1 thread, basic graph opt": make(opt=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        }
        calls = {k: (lambda s=s: s.run(None, feed)) for k, s in variants.items()}
        bind_sess = variants["1 thread, session.run (runtime before)"]
        io = bind_sess.io_binding()
        for name, arr in feed.items():
            io.bind_cpu_input(name, arr)
        for o in bind_sess.get_outputs():
            io.bind_output(o.name, "cpu")
        calls["1 thread, io_binding (preallocated inputs)"] = lambda: bind_sess.run_with_iobinding(io)
        calls["runtime: open_session, bound in+out buffers (graph only)"] = art.bound["policy"].run
        # the whole runtime call (feeds from the history, noise, run, outputs) as PolicyRunner.infer does it
        runner.push({k: np.zeros(shape, np.float32) for k, shape in runner.spec.obs.items()})
        calls["runtime: PolicyRunner.infer (open_session + its buffers)"] = runner.infer
        calls.update(_path_items(runner))
        ts = {k: [] for k in calls}
        for _ in range(runs):
            for k, f in calls.items():
                t = time.perf_counter_ns()
                r = f()
                ts[k].append(r if k.startswith("IK ") else time.perf_counter_ns() - t)  # IK rows time themselves
    rows, out = [], {}
    for k, v in ts.items():
        p = np.percentile(np.array(v) / 1e3, [50, 99, 99.9])
        out[k] = {"p50_us": p[0], "p99_us": p[1], "p999_us": p[2]}
        rows.append([k, f"{p[0]:.1f}", f"{p[1]:.1f}", f"{p[2]:.1f}", f"{p[1] / p[0]:.1f}"])
    t = print_table(f"onnxruntime session options, reach policy, and the other items of a controller step, {runs} "
                    "interleaved calls each (us)",
                    ["options", "p50", "p99", "p99.9", "p99/p50"], rows)
    write_results("bench_control_ort", {"variants": out, "table": t})
    return out


# --- soak ------------------------------------------------------------------------------------------------------------
def _fuzz_frames(rng: np.random.Generator, q: np.ndarray) -> list[tuple[int, bytes, str]]:
    """(channel 1 command / 2 control, frame, the reject reason the server must count). Never a frame the server
    may act on: every one is malformed, for another robot, from the future, expired, or out of range."""
    from hardware.protocol import messages as m

    now = time.monotonic_ns()
    tgt = lambda send, **kw: m.JointTarget(q, send + 50_000_000, send + 100_000_000, **kw)  # noqa: E731
    k = int(rng.integers(7))
    if k == 0:
        return [(int(rng.integers(1, 3)), rng.bytes(int(rng.integers(1, 900))), "malformed")]
    if k == 1:
        return [(1, tgt(now).to_bytes("other_arm", int(rng.integers(2**63)), now), "wrong_robot")]
    if k == 2:
        return [(1, tgt(now + 300_000_000).to_bytes("arm", int(rng.integers(2**63)), now + 300_000_000), "future")]
    if k == 3:
        old = now - 2_000_000_000
        return [(1, tgt(old).to_bytes("arm", 2**64 - 1, old), "stale")]
    if k == 4:
        return [(1, b"\x92" + b"\x00" * 5000, "too_large")]
    if k == 5:
        return [(2, m.Heartbeat("fuzz").to_bytes("arm", 1, now)[:-3], "malformed")]
    bad = m.JointTarget(q, now, now + 1).to_bytes("arm", 1, now)
    return [(1, bad.replace(b"joint_target", b"joint_targex"), "unknown_type")]


def soak(seconds: float) -> None:
    """Loopback soak: the controller (CURVE) runs reach episodes back to back while a second authenticated client
    holds every channel open and idle, and a third (authenticated) fuzzes the command and control channels at
    ~100 Hz. Pass: no state gap over 100 ms seen by an observer, every heartbeat answered, no heartbeat_lost stop,
    every reject accounted for by what the fuzzer sent."""
    import zmq
    from hardware.protocol import allow_client, keys_generate, load_client_keys, parse_bind
    from hardware.protocol import messages as m
    from hardware.protocol.transport import ClientTransport, client_socket, free_base_port
    from robotstack.export.tiny import export_tiny

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        keys_generate(tmp / "keys", ("server", "client", "idle", "fuzz"))
        for n in ("client", "idle", "fuzz"):
            allow_client(tmp / "keys", tmp / "keys" / f"{n}.public")
        ck = load_client_keys(tmp / "keys")
        idle_keys = load_client_keys(tmp / "keys", name="idle")
        fuzz_keys = load_client_keys(tmp / "keys", name="fuzz")
        artifact = str(export_tiny(tmp / "reach_policy", task_spec("reach")))

        def during(addr: str, wk) -> dict:
            ep = parse_bind(addr)
            ctx = zmq.Context()
            idle = [client_socket(ctx, zmq.SUB, ep.state, idle_keys, subscribe=b"", conflate=1),
                    client_socket(ctx, zmq.PUSH, ep.command, idle_keys, conflate=1),
                    client_socket(ctx, zmq.DEALER, ep.control, idle_keys)]
            fz = {1: client_socket(ctx, zmq.PUSH, ep.command, fuzz_keys), 2: client_socket(ctx, zmq.DEALER,
                                                                                              ep.control, fuzz_keys)}
            obs = ClientTransport("arm", ep, ck)
            rng = np.random.default_rng(0)
            sent: dict[str, int] = {}
            q = np.zeros(7)
            max_gap, hb_max, hb_fail, last_state, t_hb = 0.0, 0.0, 0, None, 0.0
            # WNOWAIT: look without reaping, so rusage_wait still collects the worker's CPU time
            while os.waitid(os.P_PID, wk.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                got = obs.recv_state(0.01)
                t = time.monotonic()
                if got is not None:
                    q = np.asarray(got.msg.joint_pos, dtype=np.float64)
                    if last_state is not None:
                        max_gap = max(max_gap, t - last_state)
                    last_state = t
                for ch, frame, reason in _fuzz_frames(rng, q):
                    try:
                        fz[ch].send_multipart([b"", frame] if ch == 2 else [frame], zmq.NOBLOCK)
                        sent[reason] = sent.get(reason, 0) + 1
                    except zmq.Again:
                        pass
                if t - t_hb > 0.5:  # an observer's describe: answered, never acted on
                    t_hb = t
                    t0 = time.monotonic()
                    try:
                        obs.request(m.Describe(), 1.0)
                        hb_max = max(hb_max, time.monotonic() - t0)
                    except Exception:  # noqa: BLE001 - counted
                        hb_fail += 1
            for s in [*idle, *fz.values()]:
                s.close()
            obs.close()
            ctx.term()
            return {"fuzz_sent": sent, "max_state_gap_s": max_gap, "max_request_s": hb_max, "request_failures": hb_fail}

        print(f"soak: {seconds:.0f} s, CURVE on: controller (reach, ONNX) + idle client + fuzzer ...", flush=True)
        # one scene per second is plenty: a reach episode lasts >= 0.5 s
        res = run_phase("reach", seconds, artifact, 1, max(10, int(seconds)), 100, tmp, free_base_port(),
                        keys=tmp / "keys", during=during)
    side, server = res["side"], res.get("server_status", {})
    counters = res["server"]["counters"]
    rejects = server.get("rejects", {})
    fuzz = side["fuzz_sent"]
    # the first failing check names a reject (docs/protocol.md §6): the fuzzer's expired targets count as stopped /
    # mode_hold / no_heartbeat when they land while the server is in that state (no_heartbeat: between a reset and
    # the controller's next heartbeat; tests/hardware/test_servo.py), and random "malformed" bytes that happen to be
    # one msgpack value count as bad_envelope
    first_check = {"no_heartbeat": "stale", "stopped": "stale", "mode_hold": "stale", "bad_envelope": "malformed"}
    unexplained = {k: v for k, v in rejects.items() if k not in fuzz and first_check.get(k) not in fuzz}
    eps = res["episodes"]
    lat = res["telemetry"]["latency_ms"]
    loop = res["server"]["loop"]
    rows = [["episodes (all ok)", f"{len(eps)} ({all(e['ok'] for e in eps)})"],
            ["reach success", f"{np.mean([e['success'] for e in eps]):.0%}"],
            ["max state gap seen by an observer", f"{side['max_state_gap_s'] * 1e3:.1f} ms"],
            ["describe requests: max reply / failures", f"{side['max_request_s'] * 1e3:.1f} ms / "
                                                         f"{side['request_failures']}"],
            ["server STOPs by reason", json.dumps(counters.get("stops", {}))],
            ["servo period p99 / p99.9 / max", f"{loop['period_us']['p99']:.0f} / {loop['period_us']['p999']:.0f} / "
                                                f"{loop['period_us']['max']:.0f} us; late {loop['late_ticks']}"],
            ["state->target p50 / p99 / p99.9", f"{lat['state_to_target']['p50']:.2f} / "
                                                 f"{lat['state_to_target']['p99']:.2f} / "
                                                 f"{lat['state_to_target']['p999']:.2f} ms"],
            ["fuzz frames sent by expected reason", json.dumps(fuzz)],
            ["server rejects (Status)", json.dumps(rejects)],
            ["rejects not explained by the fuzzer", json.dumps(unexplained) or "{}"]]
    t = print_table(f"soak {res['cpu']['wall_s']:.0f} s (loopback, CURVE)", ["check", "value"], rows)
    path = write_results("bench_control_soak", {"soak": res, "table": t})
    print(f"wrote {path}")


def timing_rows(res: dict) -> list[list[str]]:
    """The timing table's rows for one phase-1 run (server loop stats + controller telemetry)."""
    loop = res["server"]["loop"]
    per = loop["period_us"]
    tel = res["telemetry"]
    lat = tel["latency_ms"]
    rows = [
        [f"servo period ({res['driver']}, 1 kHz)", f"{per['p50'] / 1e3:.3f}", f"{per['p99'] / 1e3:.3f}",
         f"{per['p999'] / 1e3:.3f}", f"{per['max'] / 1e3:.3f}", f"late {loop['late_ticks']} / {loop['ticks']} ticks"],
        ["servo work per tick", f"{loop['work_us']['p50'] / 1e3:.3f}", f"{loop['work_us']['p99'] / 1e3:.3f}",
         f"{loop['work_us']['p999'] / 1e3:.3f}", f"{loop['work_us']['max'] / 1e3:.3f}",
         f"SCHED_FIFO {loop['realtime']}"],
        ["controller wake-ups (state arrival or 100 Hz re-send)", f"{tel['loop_period_ms']['p50']:.3f}", f"{tel['loop_period_ms']['p99']:.3f}",
         f"{tel['loop_period_ms']['p999']:.3f}", f"{tel['loop_period_ms']['max']:.3f}",
         f"late {tel['late_ticks']} ticks"],
    ]
    for k in ("state_to_recv", "inference", "state_to_target", "target_to_applied", "state_to_applied"):
        v = lat[k]
        rows.append([f"{k} (per policy step)", f"{v['p50']:.3f}", f"{v['p99']:.3f}", f"{v['p999']:.3f}",
                     f"{v['max']:.3f}", f"n={v['n']}" + (f", misses > {tel['deadline_ms']:.0f} ms: "
                                                         f"{tel['deadline_misses']}; IK ahead {tel.get('ik_ahead', 0)}, "
                                                         f"on the step {tel.get('ik_on_step', 0)}"
                                                         if k == "state_to_target" else "")])
    return rows


REFERENCE_ROWS = [
    ["polymetis control loop (published, mock Franka, joint PD)", "avg 0.224", "-", "-", "4.131", "reference"],
    ["diffusion_policy RTDE loop rate (published)", "8.0 (125 Hz)", "-", "-", "-", "reference"],
    ["deoxys interpolation loop rate (published)", "2.0 (500 Hz)", "-", "-", "-", "reference"]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--task", default="reach")
    ap.add_argument("--arm", default="")
    ap.add_argument("--artifact", default="")
    ap.add_argument("--out", default="")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--min-episodes", type=int, default=50)
    ap.add_argument("--max-episodes", type=int, default=200)
    ap.add_argument("--max-steps", type=int, default=100)
    ap.add_argument("--seed0", type=int, default=1000)
    ap.add_argument("--push-episodes", type=int, default=20)
    ap.add_argument("--trained-episodes", type=int, default=50)
    ap.add_argument("--keys", default="", help="(worker) client CURVE key dir")
    ap.add_argument("--cpus", default="", help="(worker) pin the controller to these CPUs")
    ap.add_argument("--targets", default="joint", choices=["joint", "cartesian"],
                    help="target kind (the worker's; also phase 1's)")
    ap.add_argument("--pin", action="store_true",
                    help="phase 1 again, side by side: server on CPU 0 and controller on CPU 1")
    ap.add_argument("--cartesian", action="store_true",
                    help="phase 1 again, side by side: Cartesian targets (the server solves IK); pinned with --pin")
    ap.add_argument("--kinematic", action="store_true",
                    help="repeat phase 1 on the physics-free kinematic arm (serve-arm --driver kinematic; with "
                         "--pin / --cartesian as given): the runtime's own timing, as polymetis' mock-arm numbers")
    ap.add_argument("--driver", default="pybullet", choices=["pybullet", "kinematic"],
                    help="phase 1's arm: kinematic needs no pybullet (a machine without it, e.g. the GPU box) and "
                         "writes bench_control_kinematic.json; phase 2 (push) needs physics, so pass "
                         "--push-episodes 0 with it")
    ap.add_argument("--ipc", action="store_true",
                    help="phase 1 again, side by side, over ipc:// (Unix sockets) instead of tcp loopback; pinned "
                         "with --pin")
    ap.add_argument("--ort-knobs", action="store_true", help="only measure onnxruntime session options")
    ap.add_argument("--soak-seconds", type=float, default=0.0,
                    help="only the soak: CURVE controller + idle authenticated client + fuzzer for this long")
    ap.add_argument("--policy-artifact", default="",
                    help="an exported trained policy (e.g. CM-1) for phase 1 instead of the analytic one; "
                         "phase 1b is then skipped")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.ort_knobs:
        ort_knobs()
        return
    if args.soak_seconds > 0:
        soak(args.soak_seconds)
        return
    from hardware.protocol.transport import free_base_port

    if args.driver == "kinematic" and args.push_episodes > 0:
        raise SystemExit("--driver kinematic: the push phase needs a physics arm; pass --push-episodes 0")
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        if args.policy_artifact:
            artifact, what = args.policy_artifact, f"artifact {args.policy_artifact}"
        else:
            from robotstack.export.tiny import export_tiny

            artifact = str(export_tiny(tmp / "reach_policy", task_spec("reach")))
            what = "tiny DDIM-2, NOT trained: timing only"
        print(f"phase 1: reach, exported ONNX policy ({what}), >= {args.seconds:.0f} s ...", flush=True)
        reach = run_phase("reach", args.seconds, artifact, args.min_episodes, 400, 100, tmp, free_base_port(),
                          driver=args.driver, targets=args.targets)
        variants = {}  # the same phase 1 again, right after: side by side
        if args.pin:
            variants["pinned (server CPU 0, controller CPU 1)"] = dict(pin=True, driver=args.driver,
                                                                        targets=args.targets)
        if args.cartesian:
            variants["Cartesian targets" + (", pinned" if args.pin else "")] = dict(
                pin=args.pin, targets="cartesian", driver=args.driver)
        # polymetis' reference is measured on a mock arm: the same phase with no physics step
        if args.kinematic and args.driver != "kinematic":
            label = "kinematic arm (no physics)" + (", Cartesian" if args.cartesian else "") + (
                ", pinned" if args.pin else "")
            variants[label] = dict(pin=args.pin, targets="cartesian" if args.cartesian else "joint",
                                   driver="kinematic")
        if args.ipc:
            variants["ipc:// (Unix sockets)" + (", pinned" if args.pin else "")] = dict(
                pin=args.pin, targets=args.targets, driver=args.driver, transport="ipc")
        other = {}
        for label, kw in variants.items():
            print(f"phase 1, {label}, >= {args.seconds:.0f} s ...", flush=True)
            other[label] = run_phase("reach", args.seconds, artifact, args.min_episodes, 400, 100, tmp,
                                     free_base_port(), **kw)
        seeds = [e["seed"] for e in reach["episodes"]]
        reach_mj = mujoco_success("reach", seeds, artifact, 100)
        trained = trained_mj = None
        ckpt = ROOT / "runs" / "bench_il" / "reach_run" / "checkpoints" / "latest"
        if args.trained_episodes > 0 and ckpt.is_dir() and not args.policy_artifact:
            from robotstack.export.onnx_export import export_artifact

            trained_art = str(tmp / "reach_ddim")
            export_artifact(ckpt, "ddim", trained_art, steps=8, control_rate_hz=20.0, latency_runs=20,
                            parity_trials=2, task_spec=task_spec("reach"))
            print(f"phase 1b: reach, trained diffusion policy {ckpt} exported as DDIM-8 chunk (Ta=8), "
                  f"{args.trained_episodes} episodes ...", flush=True)
            trained = run_phase("reach", 0.0, trained_art, args.trained_episodes, args.trained_episodes, 100, tmp,
                                free_base_port())
            trained_mj = mujoco_success("reach", [e["seed"] for e in trained["episodes"]], trained_art, 100)
        push = push_mj = None
        if args.push_episodes > 0:
            print(f"phase 2: push, scripted expert through the runtime, {args.push_episodes} episodes ...", flush=True)
            push = run_phase("push", 0.0, None, args.push_episodes, args.push_episodes, 200, tmp, free_base_port())
            push_mj = mujoco_success("push", [e["seed"] for e in push["episodes"]], None, 200)

    rows = timing_rows(reach)
    if other:
        rows = [[f"{r[0]}, unpinned, {args.targets} targets", *r[1:]] for r in rows]
        for label, res in other.items():
            rows += [[f"{r[0]}, {label}", *r[1:]] for r in timing_rows(res)]
    rows += REFERENCE_ROWS
    t1 = print_table(f"control loop timing (ms), {args.driver} arm server + controller processes on loopback, "
                     f"{reach['cpu']['wall_s']:.0f} s", ["what", "p50", "p99", "p99.9", "max", "note"], rows)
    cpu = [[f"arm server ({args.driver}, 1 kHz)", f"{reach['cpu']['server_core_fraction']:.2f}"],
           ["controller (ONNX + IK, event-driven, 20 Hz policy)", f"{reach['cpu']['controller_core_fraction']:.2f}"]]
    t2 = print_table("CPU use (cores, user+sys / wall)", ["process", "cores"], cpu)

    def rate(xs):
        return f"{np.mean(xs):.0%} ({int(np.sum(xs))}/{len(xs)})"

    succ = [["reach", f"exported ONNX policy ({what})",
             rate([e["success"] for e in reach["episodes"]]), rate(reach_mj)]]
    if trained is not None:
        tl = trained["telemetry"]["latency_ms"]
        succ.append(["reach", "trained diffusion policy (bench_il reach_run) exported DDIM-8 "
                     f"(inference p50 {tl['inference']['p50']:.2f} / p99 {tl['inference']['p99']:.2f} ms per step)",
                     rate([e["success"] for e in trained["episodes"]]), rate(trained_mj)])
    if push is not None:
        succ.append(["push", "scripted expert through the runtime (not a learned policy)",
                     rate([e["success"] for e in push["episodes"]]), rate(push_mj)])
    t3 = print_table(f"task success, {args.driver} arm via server+controller vs MuJoCo env (same seeds)",
                     ["task", "policy", f"{args.driver} (runtime path)", "MuJoCo (env)"], succ)
    name = "bench_control" if args.driver == "pybullet" else f"bench_control_{args.driver}"
    path = write_results(name, {"driver": args.driver, "reach": reach, "reach_variants": other,
                                "reach_mujoco": reach_mj, "trained_reach": trained, "trained_reach_mujoco": trained_mj,
                                "push": push, "push_mujoco": push_mj, "tables": [t1, t2, t3]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
