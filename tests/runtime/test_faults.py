"""Fault tests: real arm-server processes on loopback, the real controller (in-process or as `robotstack deploy`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import PY, ROOT, ServerProc

from hardware.protocol import keys_generate, load_client_keys
from hardware.protocol import messages as m
from hardware.protocol import parse_bind
from robotstack.core import keys as K
from robotstack.core import kinematics as kin
from robotstack.runtime.client import ArmClient, ArmUnavailable
from robotstack.runtime.controller import Controller, ControllerConfig
from robotstack.core.errors import ArtifactError
from robotstack.runtime.policy_runner import PolicyRunner

MS = 1_000_000


def controller_for(server, policy_dir, **kw) -> Controller:
    client = ArmClient(parse_bind(server.addr))
    ctl = Controller(client, PolicyRunner(policy_dir), ControllerConfig(**kw))
    ctl.connect()
    return ctl


def deploy_proc(server, artifact, *extra) -> subprocess.Popen:
    cmd = [PY, "-m", "robotstack.cli", "deploy", "--artifact", str(artifact), "--arm", server.addr, "--quiet", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def watch_states(addr: str, until, timeout_s: float):
    """Subscribe as an observer (no heartbeats) and return the first state for which until(state) holds."""
    client = ArmClient(parse_bind(addr))
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            st = client.poll_state(0.05)
            if st is not None and until(st):
                return st, client.state_recv_ns
        return None, None
    finally:
        client.close()


def test_controller_killed_server_holds_within_50ms(server, policies):
    ctl = deploy_proc(server, policies["slow_x"], "--duration", "30")
    try:
        st, _ = watch_states(server.addr, lambda s: s.mode == "servo" and s.last_target_seq is not None, 10)
        assert st is not None, "controller never drove the arm"
        time.sleep(0.3)
        t_kill = time.monotonic_ns()
        ctl.send_signal(signal.SIGKILL)
        st, _ = watch_states(server.addr, lambda s: s.mode != "servo", 2)
        assert st is not None and st.mode == "hold"
        held_after_ms = (st.state_time_ns - t_kill) / MS
        assert held_after_ms < 50, f"server held {held_after_ms:.1f} ms after the kill"
        # the heartbeat watchdog then latches STOP and reports it
        st, _ = watch_states(server.addr, lambda s: s.mode == "stop", 2)
        assert st is not None
        client = ArmClient(parse_bind(server.addr))
        status = client.heartbeat()
        client.close()
        assert "heartbeat_lost" in status.faults
    finally:
        ctl.kill()
        ctl.wait(5)
    log = server.output()
    assert "target stale -> holding" in log and "STOP: heartbeat_lost" in log


def test_server_killed_controller_stops_and_says_why(server, policies):
    ctl = deploy_proc(server, policies["slow_x"], "--duration", "30")
    try:
        st, _ = watch_states(server.addr, lambda s: s.mode == "servo" and s.last_target_seq is not None, 10)
        assert st is not None
        t_kill = time.monotonic()
        server.proc.send_signal(signal.SIGKILL)
        out, _ = ctl.communicate(timeout=8)
        took = time.monotonic() - t_kill
    finally:
        if ctl.poll() is None:
            ctl.kill()
    assert ctl.returncode == 3, out
    # whichever watchdog notices first: the stale state (100 ms, "arm server down") or the unanswered heartbeat
    assert ("state_stale" in out and "server down" in out) or "did not answer heartbeat" in out, out
    assert took < 3.0


def test_client_without_the_curve_key_is_refused(tmp_path, policies):
    kd = tmp_path / "keys"
    keys_generate(kd, ("server", "client"))
    (kd / "clients").mkdir()
    (kd / "clients" / "client.public").write_bytes((kd / "client.public").read_bytes())
    intruder = tmp_path / "intruder"
    keys_generate(intruder, ("client",))
    (intruder / "server.public").write_bytes((kd / "server.public").read_bytes())
    srv = ServerProc(keys=str(kd))
    clients = []  # closed even when an assert fails: a leaked zmq context can block a later garbage collection
    try:
        good = ArmClient(parse_bind(srv.addr), load_client_keys(kd))
        clients.append(good)
        assert good.wait_state(5).joint_pos.shape == (7,)
        assert good.heartbeat().ok
        bad = ArmClient(parse_bind(srv.addr), load_client_keys(intruder))
        clients.append(bad)
        with pytest.raises(ArmUnavailable):
            bad.wait_state(1.0)
        with pytest.raises(ArmUnavailable):
            bad.heartbeat(timeout_s=0.5)
        plain = ArmClient(parse_bind(srv.addr))  # no keys at all
        clients.append(plain)
        with pytest.raises(ArmUnavailable):
            plain.wait_state(1.0)
    finally:
        for c in clients:
            c.close()
        srv.stop()
    assert "not on the allow-list" in srv.output()


def test_nan_policy_output_holds_and_stops(shared_server, policies):
    ctl = controller_for(shared_server, policies["nan"])
    try:
        res = ctl.run_episode(max_steps=20)
        assert not res.ok and "nonfinite_output" in res.stop_reason
        assert ctl.safety.events.get("nonfinite_output") == 1
        st = ctl.client.wait_state(1.0, newer_than_ns=time.monotonic_ns())
        assert st.mode == "hold"
    finally:
        ctl.client.close()


def test_stale_and_out_of_order_targets_are_ignored(shared_server):
    client = ArmClient(parse_bind(shared_server.addr))
    client.reset(go_home=True)
    st0 = client.wait_state(1.0)
    client.heartbeat()
    tr = client.transport
    q0 = np.array(st0.joint_pos)
    now = time.monotonic_ns()
    fresh = m.JointTarget(positions=q0 + 0.05, target_time_ns=now + 500 * MS, expires_ns=now + 2000 * MS)
    tr.command_sock.send(fresh.to_bytes("arm", 1000, now))
    time.sleep(0.05)
    # out of order: a lower seq, sent later
    now = time.monotonic_ns()
    older_seq = m.JointTarget(positions=q0 - 0.2, target_time_ns=now + 100 * MS, expires_ns=now + 2000 * MS)
    tr.command_sock.send(older_seq.to_bytes("arm", 999, now))
    time.sleep(0.05)
    # stale: sent 300 ms ago, valid for 100 ms
    old = time.monotonic_ns() - 300 * MS
    stale = m.JointTarget(positions=q0 - 0.2, target_time_ns=old + 50 * MS, expires_ns=old + 100 * MS)
    tr.command_sock.send(stale.to_bytes("arm", 1001, old))
    time.sleep(0.05)
    status = client.heartbeat()
    assert status.last_target_seq == 1000
    assert status.rejects.get("out_of_order", 0) >= 1 and status.rejects.get("stale", 0) >= 1, status.rejects
    time.sleep(0.6)
    st = client.wait_state(1.0)
    assert np.abs(np.asarray(st.joint_pos) - (q0 + 0.05)).max() < 0.02  # only the fresh, in-order target moved it
    client.close()


def test_artifact_that_does_not_match_the_arm_is_refused(shared_server, policies):
    client = ArmClient(parse_bind(shared_server.addr))
    ctl = Controller(client, PolicyRunner(policies["mismatch"]))
    with pytest.raises(ArtifactError) as err:
        ctl.connect()
    text = str(err.value)
    assert "6 joints" in text and "'robot_joint_pos'" in text and "'object_state'" in text
    client.close()


def test_artifact_for_other_kinematics_is_refused(shared_server, policies):
    """A 7-joint policy trained for another arm (a Meta-World Sawyer export) must not drive the Panda: its
    end-effector actions are mapped with the Panda's kinematics. Joint count alone let it through before."""
    client = ArmClient(parse_bind(shared_server.addr))
    ctl = Controller(client, PolicyRunner(policies["sawyer"]))
    with pytest.raises(ArtifactError, match="'sawyer' kinematics"):
        ctl.connect()
    client.close()


def test_runtime_never_imports_torch(shared_server, policies):
    code = f"""
import sys
from hardware.protocol import parse_bind
from robotstack.runtime.client import ArmClient
from robotstack.runtime.controller import Controller
from robotstack.runtime.policy_runner import PolicyRunner
ctl = Controller(ArmClient(parse_bind({shared_server.addr!r})), PolicyRunner({str(policies['slow_x'])!r}))
ctl.connect()
res = ctl.run_episode(max_steps=10)
assert res.steps == 10, res
bad = sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.') or k.startswith('policies'))
print('IMPORTED', bad)
"""
    out = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "IMPORTED []" in out.stdout, out.stdout


def test_hot_swap_switches_without_a_jump(shared_server, policies):
    ctl = controller_for(shared_server, policies["plus_x"])
    try:
        new = PolicyRunner(policies["minus_x"])
        threading.Timer(0.5, ctl.request_swap, args=(new,)).start()
        res = ctl.run_episode(max_steps=30)
        assert res.ok and res.steps == 30 and ctl.swaps == 1
        f = res.frames
        a = f[K.ACTION]
        assert a[5, 0] > 0.4 and a[-1, 0] < -0.4  # it did switch
        assert np.abs(np.diff(a[:, 0])).max() <= 0.5 + 1e-6  # blended + max change per step
        tcp = np.array([kin.forward_kinematics(q)[2] for q in f["target_joint_pos"].astype(np.float64)])
        step = np.linalg.norm(np.diff(tcp, axis=0), axis=1)
        assert step.max() <= 0.02 * 1.1 + 2e-3, step.max()  # never more than one policy step of motion
    finally:
        ctl.client.close()


class ScriptedDevice:
    """A person who takes over for steps 5..10 (engaged), pushing +y."""

    def __init__(self):
        self.n = 0

    def poll(self):
        from hardware.teleop.base import TeleopCommand

        self.n += 1
        engaged = 5 <= self.n <= 10
        return TeleopCommand(motion=np.array([0, 1.0 if engaged else 0, 0, 0], np.float32), gripper_closed=False,
                             engaged=engaged)

    def close(self):
        pass


def test_takeover_end_resets_the_warm_start_before_the_next_inference(shared_server, policies):
    """Issue 10.6: after a human takeover the RTI warm start (a chunk from before the person moved the arm) must be
    dropped: the artifact's reset() runs once, after the last takeover step and before the next inference."""
    events = []

    class Device(ScriptedDevice):
        def poll(self):
            cmd = super().poll()
            events.append("human" if cmd.engaged else "poll")
            return cmd

    runner = PolicyRunner(policies["slow_x"])
    art_reset, art_act = runner.artifact.reset, runner.artifact.act
    runner.artifact.reset = lambda: (events.append("reset"), art_reset())[1]
    runner.artifact.act = lambda h: (events.append("act"), art_act(h))[1]
    client = ArmClient(parse_bind(shared_server.addr))
    try:
        ctl = Controller(client, runner, takeover=Device())
        ctl.connect()
        res = ctl.run_episode(max_steps=15)
    finally:
        client.close()
    assert res.ok and res.interventions == 6 and res.safety.get("takeover_end") == 1
    first, last_human = events.index("poll"), len(events) - 1 - events[::-1].index("human")
    assert "reset" not in events[first:last_human]  # the policy keeps its warm start while it drives
    after = events[last_human + 1:]
    assert after.index("reset") < after.index("act") and after.count("reset") == 1


def test_takeover_flags_interventions_in_the_recording(shared_server, policies, tmp_path):
    from robotstack.data.store import EpisodeStore
    from robotstack.eval.arm_collect import save_episode

    client = ArmClient(parse_bind(shared_server.addr))
    ctl = Controller(client, PolicyRunner(policies["slow_x"]), takeover=ScriptedDevice())
    ctl.connect()
    res = ctl.run_episode(max_steps=15)
    assert res.ok and res.interventions == 6
    store = EpisodeStore.create(tmp_path / "run.zarr")
    idx = save_episode(store, res, task="reach", seed=0, control_hz=20.0, policy_id="reach")
    ep = store.episode(idx)
    flags = ep[K.INTERVENTION]
    assert flags.tolist() == [4 <= i <= 9 for i in range(15)]
    assert store.episode_meta(idx).source == "intervention"
    y = ep[K.ACTION][:, 1]
    assert np.all(y[7:10] > 0.9)  # the person's +y, not the policy's (ramped in by the max-change limit)
    assert np.abs(np.diff(y)).max() <= 0.5 + 1e-6
    assert {"policy_action", "target_joint_pos", "step_times", "latency_ms", K.CAPTURE_TIME} <= set(ep)
    assert np.all(np.isnan(ep["policy_action"][4:10]))  # no policy output was used on those steps
    assert np.all(np.diff(ep[K.CAPTURE_TIME]) > 0)
    store.close()
    client.close()


def test_keep_alive_between_episodes_holds_off_the_heartbeat_watchdog(shared_server, policies):
    """deploy saves each episode while `keep_alive` heartbeats: a save slower than the server's heartbeat timeout
    (0.5 s) must not STOP the arm between episodes (it did in the demo on a loaded machine)."""
    ctl = controller_for(shared_server, policies["slow_x"])
    try:
        ctl.run_episode(max_steps=3)
        with ctl.keep_alive():
            time.sleep(1.2)  # a slow store commit
        status = ctl.client.heartbeat()
        assert status.mode != "stop" and "heartbeat_lost" not in status.faults, status
    finally:
        ctl.client.close()


def test_deploy_cartesian_targets_pinned_records_tcp_targets(shared_server, policies, tmp_path):
    """`deploy --targets cartesian --cpus N`: the real deploy process, pinned, sends TCP targets (the server's servo
    solves IK); the recorded episode carries the TCP targets and NaN joint targets, and a joint-target run appends
    to the same store (one schema); a CPU it may not use is refused."""
    cpu = str(min(os.sched_getaffinity(0)))
    for kind in ("joint", "cartesian"):
        proc = deploy_proc(shared_server, policies["plus_x"], "--max-steps", "10", "--targets", kind,
                           "--cpus", cpu, "--record", str(tmp_path / "cart.zarr"))
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, out
    from robotstack.data.store import EpisodeStore

    store = EpisodeStore.open(tmp_path / "cart.zarr")
    assert np.isfinite(store.episode(0)["target_joint_pos"]).all()
    ep = store.episode(1)
    assert np.isnan(ep["target_joint_pos"]).all() and ep["target_tcp"].shape == (10, 4)
    x = ep["target_tcp"][:, 0]
    assert x[-1] - x[0] > 0.05  # the +x policy's TCP targets advanced
    store.close()
    bad = deploy_proc(shared_server, policies["plus_x"], "--cpus", "4096")
    out, _ = bad.communicate(timeout=60)
    assert bad.returncode == 2 and "--cpus '4096'" in out and "not available" in out
