"""A second arm-server client written from docs/protocol.md alone: plain pyzmq + msgpack, no robotstack imports.

It checks that the document is enough: learn the robot id from a state frame, `describe` the arm, arm the
heartbeat, move joint 0 by +DELTA rad and back with joint targets, read the applied-target echo, and print one
JSON summary line. Exit status 0 when every step worked.

    python tools/plain_arm_client.py --arm tcp://127.0.0.1:6510 [--keys DIR] [--delta 0.05]

--keys DIR: CURVE, with DIR/client.secret, DIR/client.public and DIR/server.public (z85 text files).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import msgpack
import zmq

VERSION = 2


def now_ns() -> int:
    return time.monotonic_ns()  # CLOCK_MONOTONIC, as the protocol asks


def array(values, dtype: str = "float64") -> dict:
    import array as pyarray  # stdlib: little-endian doubles on every platform this runs on

    a = pyarray.array("d", values)
    if sys.byteorder != "little":
        a.byteswap()
    return {"dtype": dtype, "shape": [len(values)], "data": a.tobytes()}


def values(arr: dict) -> list[float]:
    import array as pyarray

    code = {"float64": "d", "float32": "f"}[arr["dtype"]]
    a = pyarray.array(code, arr["data"])
    if sys.byteorder != "little":
        a.byteswap()
    return list(a)


class PlainClient:
    def __init__(self, arm: str, keys: str = ""):
        host, port = arm.removeprefix("tcp://").rsplit(":", 1)
        base = int(port)
        self.ctx = zmq.Context()
        self.seq = 0
        self.robot_id = ""

        def sock(kind, port_, **opts):
            s = self.ctx.socket(kind)
            s.linger = 0
            if keys:
                read = lambda name: open(f"{keys}/{name}", "rb").read().strip()  # noqa: E731
                s.curve_serverkey, s.curve_publickey = read("server.public"), read("client.public")
                s.curve_secretkey = read("client.secret")
            for k, v in opts.items():
                setattr(s, k, v)
            s.connect(f"tcp://{host}:{port_}")
            return s

        self.state = sock(zmq.SUB, base, conflate=1, subscribe=b"")
        self.command = sock(zmq.PUSH, base + 1, conflate=1)
        self.control = sock(zmq.DEALER, base + 2, immediate=1)

    def frame(self, mtype: str, body: dict) -> bytes:
        self.seq += 1  # one counter for every channel
        return msgpack.packb([VERSION, mtype, self.robot_id, self.seq, now_ns(), body], use_bin_type=True)

    def recv_state(self, timeout_s: float = 2.0) -> tuple[list, dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.state.poll(50):
                try:
                    data = self.state.recv(zmq.NOBLOCK)
                except zmq.Again:
                    continue
                top = msgpack.unpackb(data, raw=False)
                if top[0] == VERSION and top[1] == "state":
                    return top, top[5]
        raise TimeoutError("no state frame")

    def request(self, mtype: str, body: dict, timeout_s: float = 1.0) -> dict:
        deadline = time.monotonic() + timeout_s
        # IMMEDIATE: nothing is queued before the (authenticated) connection exists; wait for it, bounded
        if not self.control.poll(int(timeout_s * 1000), zmq.POLLOUT):
            raise TimeoutError(f"control channel not connected; {mtype} not sent")
        data = self.frame(mtype, body)
        seq = self.seq
        self.control.send_multipart([b"", data], zmq.NOBLOCK)
        while time.monotonic() < deadline:
            if not self.control.poll(20):
                continue
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                continue
            top = msgpack.unpackb(frames[-1], raw=False)
            if top[5].get("reply_to_seq") == seq:  # drop late replies to earlier requests
                return {"type": top[1], **top[5]}
        raise TimeoutError(f"no reply to {mtype}")

    def target(self, q: list[float], reach_in_s: float, valid_for_s: float = 0.5) -> int:
        t = now_ns()
        body = {"positions": array(q), "target_time_ns": t + int(reach_in_s * 1e9),
                "expires_ns": t + int(valid_for_s * 1e9)}
        self.seq += 1
        try:  # never wait on the command channel: a target not sent now is worthless later
            self.command.send(msgpack.packb([VERSION, "joint_target", self.robot_id, self.seq, t, body],
                                            use_bin_type=True), zmq.NOBLOCK)
        except zmq.Again:
            pass
        return self.seq

    def close(self) -> None:
        for s in (self.state, self.command, self.control):
            s.close()
        self.ctx.term()


def drive(c: PlainClient, goal: list[float], lo: list[float], hi: list[float], seconds: float) -> tuple[float, bool]:
    """Stream the goal (clamped to the described range) with heartbeats until joint 0 is within 5 mrad."""
    goal = [min(max(g, a), b) for g, a, b in zip(goal, lo, hi)]
    end, echoed = time.monotonic() + seconds, False
    while time.monotonic() < end:
        seq = c.target(goal, reach_in_s=0.3)
        c.request("heartbeat", {"source": "plain_client"})
        _, st = c.recv_state()
        echoed |= st.get("last_target_seq", -1) >= seq - 2
        err = abs(values(st["joint_pos"])[0] - goal[0])
        if err < 0.005:
            return err, echoed
        time.sleep(0.01)
    return err, echoed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", default="tcp://127.0.0.1:6510")
    ap.add_argument("--keys", default="")
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args(argv)
    c = PlainClient(args.arm, args.keys)
    out = {}
    try:
        header, st = c.recv_state(5.0)
        c.robot_id = header[2]  # every frame names its robot; requests must carry the same id
        d = c.request("describe", {})
        lo, hi = values(d["joint_min"]), values(d["joint_max"])
        status = c.request("reset", {"clear_faults": True, "go_home": False})
        q0 = values(st["joint_pos"])
        err_out, echo_out = drive(c, [q0[0] + args.delta, *q0[1:]], lo, hi, args.seconds)
        err_back, echo_back = drive(c, q0, lo, hi, args.seconds)
        final = c.request("heartbeat", {"source": "plain_client"})
        out = {"robot_id": c.robot_id, "arm": d["arm"], "dof": len(lo), "modes": d["modes"],
               "targets": d["targets"], "reset_ok": status["ok"], "err_out": err_out, "err_back": err_back,
               "echo": echo_out and echo_back, "rejects": final["rejects"], "mode": final["mode"]}
        ok = status["ok"] and err_out < 0.005 and err_back < 0.005 and out["echo"]
    except TimeoutError as e:
        out, ok = {"error": str(e)}, False
    finally:
        c.close()
    print(json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
