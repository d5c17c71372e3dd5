"""The controller's connection to one arm server: newest state, targets, heartbeats, e-stop, reset, mode, clock.

Thin over hardware.protocol.ClientTransport (one thread uses it). Times: ``*_ns`` are this process's
CLOCK_MONOTONIC; ``to_local`` maps a server time with the offset estimated from heartbeat round trips (the
fastest of the last 50 wins: the least queueing). On one host the estimate is ~0.
"""

from __future__ import annotations

import collections
import time

import numpy as np

from hardware.protocol import load_client_keys, parse_bind
from hardware.protocol import messages as m
from hardware.protocol.transport import ClientTransport, ControlTimeout, Endpoints, Received, clock_offset_ns
from robotstack.core import kinematics as kin
from robotstack.core.errors import RobotstackError
from robotstack.core.rotations import mat_to_quat


def arm_endpoints(address: str) -> Endpoints:
    """The arm server's address as given to its --bind (tcp://HOST:PORT or ipc://DIR) -> its three endpoints;
    ValueError naming the address when it is neither (a port that is not a number included)."""
    try:
        return parse_bind(address)
    except ValueError:  # parse_bind speaks of --bind, or int() of the port: say what the client was given
        raise ValueError(f"{address!r}: expected tcp://HOST:PORT or ipc://DIR (the arm server's --bind)") from None


class ArmUnavailable(RobotstackError):
    """No state / no reply from the arm server (down, wrong address, or our CURVE key was refused)."""


class ArmClient:
    def __init__(self, endpoints: Endpoints, keys=None, robot_id: str = "arm", request_timeout_s: float = 0.25):
        self.endpoints = endpoints
        self.transport = ClientTransport(robot_id, endpoints, keys)
        self.timeout = request_timeout_s
        self.state: m.RobotState | None = None
        self.state_recv_ns = 0
        self.state_count = 0
        self._rtts: collections.deque[tuple[int, int]] = collections.deque(maxlen=50)  # (rtt, offset)
        self.offset_ns = 0
        self.last_status: m.Status | None = None

    @classmethod
    def at(cls, address: str, keys_dir: str = "", robot_id: str = "arm") -> ArmClient:
        """A client of the arm server bound at ``address`` (tcp://HOST:PORT, as its --bind), with the CURVE client
        keys of ``keys_dir`` (client.secret, server.public; "" = no CURVE, loopback servers only)."""
        return cls(arm_endpoints(address), load_client_keys(keys_dir) if keys_dir else None, robot_id=robot_id)

    # --- state ------------------------------------------------------------------------------------------
    def poll_state(self, timeout_s: float = 0.0) -> m.RobotState | None:
        """The newest state if a new one arrived (else None); keeps it in ``self.state``."""
        got = self.transport.recv_state(timeout_s)
        if got is None:
            return None
        self.state, self.state_recv_ns = got.msg, got.recv_time_ns
        self.state_count += 1
        return got.msg

    def rehearse(self) -> None:
        """Run the last state's decode and the last target's encode again, sending nothing (warms the path before a
        state is due: ClientTransport.rehearse)."""
        self.transport.rehearse()

    def wait_state(self, timeout_s: float = 3.0, newer_than_ns: int | None = None) -> m.RobotState:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            st = self.poll_state(min(0.05, max(0.0, deadline - time.monotonic())))
            if st is not None and (newer_than_ns is None or self.to_local(st.state_time_ns) > newer_than_ns):
                return st
        raise ArmUnavailable(f"no state from the arm server at {self.endpoints.state} within {timeout_s:.1f} s "
                             "(server not running, wrong address, or it refused our CURVE key)")

    def to_local(self, server_ns: int) -> int:
        return server_ns - self.offset_ns

    # --- targets ----------------------------------------------------------------------------------------
    def send_joint_target(self, q: np.ndarray, gripper: float | None, target_time_ns: int, expires_ns: int,
                          now_ns: int) -> int | None:
        tgt = m.JointTarget(positions=np.asarray(q, dtype=np.float64), target_time_ns=int(target_time_ns),
                            expires_ns=int(expires_ns), gripper=None if gripper is None else np.array([gripper]))
        return self.transport.send_target(tgt, send_time_ns=now_ns)

    def send_cartesian_target(self, pos: np.ndarray, yaw: float, gripper: float | None, target_time_ns: int,
                              expires_ns: int, now_ns: int) -> int | None:
        """A TCP target (base frame, gripper pointing down, rotated by ``yaw``); the server's servo solves IK."""
        tgt = m.CartesianTarget(pos=np.asarray(pos, dtype=np.float64), quat=mat_to_quat(kin.down_rotation(yaw)),
                                target_time_ns=int(target_time_ns), expires_ns=int(expires_ns),
                                gripper=None if gripper is None else np.array([gripper]))
        return self.transport.send_target(tgt, send_time_ns=now_ns)

    # --- control ----------------------------------------------------------------------------------------
    def request(self, msg, timeout_s: float | None = None) -> Received:
        try:
            rep = self.transport.request(msg, self.timeout if timeout_s is None else timeout_s)
        except ControlTimeout as e:
            raise ArmUnavailable(f"arm server at {self.endpoints.control} did not answer {msg.TYPE}: {e}") from None
        if isinstance(rep.msg, m.Status):
            self.last_status = rep.msg
            off = clock_offset_ns(self.transport.last_request_sent_ns, rep)
            self._rtts.append((rep.recv_time_ns - self.transport.last_request_sent_ns, off))
            self.offset_ns = min(self._rtts)[1]
        return rep

    def heartbeat(self, timeout_s: float | None = None) -> m.Status:
        return self.request(m.Heartbeat(source="runtime"), timeout_s).msg

    def describe(self, timeout_s: float | None = None) -> m.Description:
        """The server's limits, box, rates, modes and the target kinds it takes (docs/protocol.md §4)."""
        return self.request(m.Describe(), timeout_s).msg

    def estop(self, reason: str, timeout_s: float = 0.5) -> m.Status | None:
        """Engage the software stop; best effort (returns None when the server did not answer)."""
        try:
            return self.request(m.EStop(engage=True, reason=reason[:m.MAX_TEXT]), timeout_s).msg
        except ArmUnavailable:
            return None

    def reset(self, go_home: bool = True, timeout_s: float = 2.0) -> m.Status:
        st = self.request(m.Reset(clear_faults=True, go_home=go_home), timeout_s).msg
        if not st.ok and st.mode == "stop":
            raise ArmUnavailable(f"arm server refused reset: {st.detail}")
        return st

    def mode(self, mode: str, timeout_s: float | None = None) -> m.ModeReply:
        rep = self.request(m.ModeRequest(mode=mode), timeout_s).msg
        if not rep.accepted:
            raise ArmUnavailable(f"arm server refused mode {mode!r}: {rep.detail} (mode in force: {rep.mode})")
        return rep

    def close(self) -> None:
        self.transport.close()
