"""Transport over real sockets between real processes: CURVE allow-list, latest-wins, endpoint security, keys.

The peer side runs this file as a script (``python test_protocol_transport.py <role> ...``) and prints one
JSON line with what it saw.
"""

import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hardware.protocol import (ClientTransport, ControlTimeout, EStop, Endpoints, Heartbeat,  # noqa: E402
                               InsecureEndpointError, JointTarget, KeyFileError, ModeReply, ModeRequest, RobotState,
                               ServerTransport, Status, clock_offset_ns, is_loopback_endpoint, keys_generate,
                               load_client_keys, load_server_keys, parse_bind)

ROBOT = "panda-test"


def _free_port_base() -> int:
    """Three consecutive free ports (best effort)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + 2 < 65535 and all(_free(base + i) for i in (1, 2)):
            return base
    raise RuntimeError("no free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _state(i: int) -> RobotState:
    return RobotState(np.full(7, i, np.float32), np.zeros(7, np.float32), time.monotonic_ns())


def _status(req, **kw) -> Status:
    return Status(req.header.seq, True, "idle", False, time.monotonic_ns(), **kw)


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


def _result(proc: subprocess.Popen, timeout: float = 20) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture()
def keydir(tmp_path):
    d = tmp_path / "keys"
    keys_generate(d, ["server", "client", "intruder"])
    (d / "clients").mkdir()
    shutil.copy(d / "client.public", d / "clients" / "client.public")
    return d


# --- peer roles (run in a child process) -----------------------------------------------------------------
def peer_curve_client(keydir: str, port: int, name: str) -> dict:
    keys = load_client_keys(keydir, name)
    out = {"heartbeat": None, "state": None}
    with ClientTransport(ROBOT, Endpoints.tcp("127.0.0.1", port), keys) as cl:
        try:
            rep = cl.request(Heartbeat("policy"), timeout_s=2.0 if name == "client" else 0.7)
            out["heartbeat"] = rep.msg.ok
            out["offset_ns"] = clock_offset_ns(cl.last_request_sent_ns, rep)
            rtts = []
            for _ in range(300):
                t0 = time.perf_counter_ns()
                cl.request(Heartbeat("policy"), timeout_s=1.0)
                rtts.append(time.perf_counter_ns() - t0)
            out["rtt_us"] = [float(np.percentile(rtts, q)) / 1e3 for q in (50, 90, 99)]
        except ControlTimeout as e:
            out["heartbeat_error"] = str(e)
        cl.send_target(JointTarget.make(np.zeros(7), valid_for_s=1.0))
        got = cl.recv_state(timeout_s=1.0)
        out["state"] = None if got is None else got.header.seq
        try:  # tell the server we are done (only gets through when admitted)
            cl.request(EStop(False, "done"), timeout_s=0.5 if name != "client" else 2.0)
        except ControlTimeout:
            pass
    return out


def peer_latest_wins(port: int) -> dict:
    with ClientTransport(ROBOT, Endpoints.tcp("127.0.0.1", port)) as cl:
        first = cl.recv_state(timeout_s=5.0)  # subscription is live once a priming state arrives
        cl.request(Heartbeat(), timeout_s=5.0)  # "burst now"; the server replies, then publishes 100 states
        time.sleep(0.5)  # do not read while the burst arrives
        latest = cl.recv_state(timeout_s=1.0)
        extra = cl.recv_state(timeout_s=0.2)  # conflated: nothing older is left behind it
        first_seq = cl.send_target(JointTarget.make(np.zeros(7), valid_for_s=5.0))
        for _ in range(99):
            last_seq = cl.send_target(JointTarget.make(np.ones(7), valid_for_s=5.0))
        time.sleep(0.2)
        cl.request(Heartbeat(), timeout_s=5.0)  # "targets sent"
        return {"first": first is not None, "latest_seq": latest.header.seq if latest else None,
                "latest_joint": float(latest.msg.joint_pos[0]) if latest else None, "extra": extra is not None,
                "targets": [first_seq, last_seq]}


# --- tests ------------------------------------------------------------------------------------------------
def test_curve_allowed_client_talks_unknown_client_is_refused_and_logged(keydir, caplog):
    caplog.set_level(logging.INFO, logger="robotstack.hardware.protocol")
    port = _free_port_base()
    with ServerTransport(ROBOT, Endpoints.tcp("*", port), load_server_keys(keydir)) as srv:
        results, commands, done = {}, [], 0
        for name in ("client", "intruder"):
            proc = _spawn("curve_client", str(keydir), str(port), name)
            deadline = time.monotonic() + 15
            while proc.poll() is None and time.monotonic() < deadline:
                srv.publish_state(_state(1))
                req = srv.recv_control(timeout_s=0.005)
                if req is not None:
                    if isinstance(req.msg, EStop):
                        done += 1
                    srv.reply(req, _status(req))
                cmd = srv.recv_command()
                if cmd is not None:
                    commands.append((name, cmd.peer))
            results[name] = _result(proc)
        refused = dict(srv.auth.refused)
    ok, bad = results["client"], results["intruder"]
    client_pub = (keydir / "client.public").read_text().strip()
    assert ok["heartbeat"] is True and ok["state"] is not None
    assert ("client", client_pub) in commands  # the command arrived, tagged with the sender's key
    assert done == 1  # only the admitted client's final request got through
    assert bad["heartbeat"] is None and "refused our CURVE key" in bad["heartbeat_error"]
    assert bad["state"] is None
    assert all(n == "client" for n, _ in commands)
    assert refused.get("unknown_key", 0) >= 1
    intruder_pub = (keydir / "intruder.public").read_text().strip()
    assert any("not on the allow-list" in r.getMessage() and intruder_pub in r.getMessage() for r in caplog.records)
    print(f"\nCURVE tcp loopback request/reply RTT p50/p90/p99 us: {ok['rtt_us']}, clock offset {ok['offset_ns']} ns")


def test_latest_wins_state_and_commands():
    port = _free_port_base()
    with ServerTransport(ROBOT, Endpoints.tcp("127.0.0.1", port)) as srv:
        proc = _spawn("latest_wins", str(port))
        deadline = time.monotonic() + 15
        req = None
        while req is None and time.monotonic() < deadline:  # prime until the client asks for the burst
            srv.publish_state(_state(0))
            req = srv.recv_control(timeout_s=0.02)
        assert req is not None
        srv.reply(req, _status(req))
        last = [srv.publish_state(_state(i)) for i in range(1, 101)][-1]
        req = srv.recv_control(timeout_s=10.0)  # "targets sent"
        assert req is not None
        cmd = srv.recv_command(timeout_s=1.0)
        leftover = srv.recv_command(timeout_s=0.2)
        srv.reply(req, _status(req))
        res = _result(proc)
    assert res["first"]
    assert res["latest_seq"] == last and res["latest_joint"] == 100.0
    assert not res["extra"]
    assert cmd is not None and cmd.header.seq == res["targets"][1] and float(cmd.msg.positions[0]) == 1.0
    assert leftover is None


def test_control_request_reply_in_process_and_timeout():
    base = _free_port_base()
    with ServerTransport(ROBOT, Endpoints.tcp("127.0.0.1", base)) as srv, \
            ClientTransport(ROBOT, Endpoints.tcp("127.0.0.1", base)) as cl:
        # nobody answers: the client gives up at the timeout
        t0 = time.monotonic()
        with pytest.raises(ControlTimeout):
            cl.request(ModeRequest("joint_position"), timeout_s=0.2)
        assert time.monotonic() - t0 < 1.0  # gave up near its 0.2 s timeout (slack for a loaded CI machine)
        stale = srv.recv_control(timeout_s=1.0)
        srv.reply(stale, ModeReply(stale.header.seq, False, "idle"))  # a late reply to the timed-out request
        # next request: the late reply is dropped, the matching one returned
        import threading
        th = threading.Thread(target=lambda: (lambda r: srv.reply(r, ModeReply(r.header.seq, True,
                                                                               "joint_position")))(
            srv.recv_control(timeout_s=2.0)))
        th.start()
        rep = cl.request(ModeRequest("joint_position"), timeout_s=2.0)
        th.join()
        assert isinstance(rep.msg, ModeReply) and rep.msg.accepted and rep.msg.reply_to_seq > stale.header.seq
        # wrong robot id on the command channel is rejected and counted
        other = ClientTransport("other-robot", Endpoints.tcp("127.0.0.1", base))
        other.send_target(JointTarget.make(np.zeros(7)))
        assert srv.recv_command(timeout_s=1.0) is None
        assert srv.rejects.counts["wrong_robot"] == 1
        other.close()


def test_ipc_bind_creates_its_owner_only_folder_and_serves(tmp_path):
    # `serve-arm --bind ipc://DIR` with a DIR that does not exist yet: libzmq alone fails to bind
    folder = tmp_path / "run" / "arm"
    with ServerTransport(ROBOT, parse_bind(f"ipc://{folder}")) as srv, \
            ClientTransport(ROBOT, parse_bind(f"ipc://{folder}")) as cl:
        assert folder.is_dir() and (folder.stat().st_mode & 0o777) == 0o700
        import threading
        th = threading.Thread(target=lambda: (lambda r: srv.reply(r, ModeReply(r.header.seq, True, "idle")))(
            srv.recv_control(timeout_s=5.0)))
        th.start()
        rep = cl.request(ModeRequest("idle"), timeout_s=5.0)
        th.join()
        assert isinstance(rep.msg, ModeReply) and rep.msg.accepted


def test_non_loopback_needs_keys():
    assert is_loopback_endpoint("tcp://127.0.0.1:1") and is_loopback_endpoint("tcp://[::1]:1")
    assert is_loopback_endpoint("ipc:///tmp/x") and is_loopback_endpoint("tcp://localhost:5")
    for ep in ("tcp://*:1", "tcp://0.0.0.0:1", "tcp://eth0:1", "tcp://10.0.0.2:1", "tcp://robot.local:1",
               "tcp://127.0.0.1:1;10.0.0.2:2", "udp://127.0.0.1:1"):
        assert not is_loopback_endpoint(ep), ep
    with pytest.raises(InsecureEndpointError):
        ServerTransport(ROBOT, Endpoints.tcp("*", 1))
    with pytest.raises(InsecureEndpointError):
        ClientTransport(ROBOT, Endpoints.tcp("10.1.2.3", 1))


def test_key_files(tmp_path, keydir):
    for name in ("server", "client"):
        assert stat.S_IMODE((keydir / f"{name}.secret").stat().st_mode) == 0o600
        assert len((keydir / f"{name}.public").read_text().strip()) == 40
    with pytest.raises(KeyFileError, match="exists"):
        keys_generate(keydir, ["server"])
    os.chmod(keydir / "client.secret", 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_client_keys(keydir)
    os.chmod(keydir / "client.secret", 0o600)
    (keydir / "client.public").write_text((keydir / "server.public").read_text())
    with pytest.raises(KeyFileError, match="does not match"):
        load_client_keys(keydir)
    with pytest.raises(KeyFileError, match="no client public keys"):
        load_server_keys(keydir, allowed=tmp_path)


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "curve_client":
        result = peer_curve_client(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif role == "latest_wins":
        result = peer_latest_wins(int(sys.argv[2]))
    else:
        raise SystemExit(f"unknown role {role}")
    print(json.dumps(result))
