"""Socket helpers: the three channels between an arm server (binds) and a runtime client (connects).

    state    PUB  -> SUB     server publishes RobotState; SUB has CONFLATE=1, so a reader gets the newest
    command  PUSH -> PULL    client sends JointTarget/CartesianTarget; CONFLATE=1 on both ends, latest wins
    control  DEALER -> ROUTER  request/reply (Heartbeat, EStop, Reset -> Status; ModeRequest -> ModeReply);
                               the client waits at most ``timeout_s`` and drops late replies by reply_to_seq

Why these patterns: CONFLATE needs single-frame messages and is not available on ROUTER, so the command
channel is PUSH/PULL; the sender's identity for auth logging comes from CURVE instead of a routing id (the
ZAP handler sets the ``User-Id`` frame property to the client's public key). The control channel must never
lose an e-stop to conflation, so it is a queued request/reply; DEALER (not REQ) on the client means a timed-out
request never wedges the socket. A REQ client also works: the server speaks the REQ envelope.

Security: a bind or connect to anything but loopback/ipc/inproc needs CURVE keys, or it raises
``InsecureEndpointError``. With keys, every tcp socket is CURVE-encrypted and the server admits only
allow-listed client keys (auth.ZapAuthenticator). Sockets are not thread-safe: use a transport from one thread.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass

import zmq

from hardware.protocol import messages as m
from hardware.protocol.auth import ZapAuthenticator
from hardware.protocol.keys import CurveClientKeys, CurveServerKeys
from robotstack.core.errors import RobotstackError

log = logging.getLogger("robotstack.hardware.protocol")

STATE_PORT, COMMAND_PORT, CONTROL_PORT = 6510, 6511, 6512
COMMAND_TYPES = (m.JointTarget.TYPE, m.CartesianTarget.TYPE)
REQUEST_TYPES = (m.Heartbeat.TYPE, m.EStop.TYPE, m.Reset.TYPE, m.ModeRequest.TYPE, m.Describe.TYPE)
REPLY_TYPES = (m.Status.TYPE, m.ModeReply.TYPE, m.Description.TYPE)
# ZMQ_MAXMSGSIZE on command/control sockets. Every frame up to this size is received, decoded and (when over its
# type's limit) rejected and counted as too_large; libzmq closes a connection that sends a longer frame (the
# server counts that as a ``disconnect``). Control queues up to rcvhwm=64 requests: 64 MiB at most.
SMALL_MAX = 1 * m.MIB
SRCFD = 2  # zmq_msg_get(ZMQ_SRCFD): the file descriptor of the connection a frame came in on
ZAP_DOMAIN = b"robotstack"


class InsecureEndpointError(RobotstackError):
    """A non-loopback bind/connect was asked for without CURVE keys."""


class ControlTimeout(RobotstackError, TimeoutError):
    """No reply on the control channel within the timeout (server down, or our key was refused)."""


@dataclass(frozen=True)
class Endpoints:
    """The three endpoints. Server: bind (``tcp://*:6510`` for all interfaces); client: connect."""

    state: str = f"tcp://127.0.0.1:{STATE_PORT}"
    command: str = f"tcp://127.0.0.1:{COMMAND_PORT}"
    control: str = f"tcp://127.0.0.1:{CONTROL_PORT}"

    @classmethod
    def tcp(cls, host: str, base_port: int = STATE_PORT) -> "Endpoints":
        return cls(f"tcp://{host}:{base_port}", f"tcp://{host}:{base_port + 1}", f"tcp://{host}:{base_port + 2}")

    @classmethod
    def ipc(cls, directory: str) -> "Endpoints":
        return cls(f"ipc://{directory}/state", f"ipc://{directory}/command", f"ipc://{directory}/control")


def parse_bind(bind: str) -> Endpoints:
    """``tcp://HOST:PORT`` -> state PORT, command PORT+1, control PORT+2; ``ipc://DIR`` -> DIR/state|command|control."""
    scheme, sep, rest = bind.partition("://")
    if not sep:
        raise ValueError(f"--bind {bind!r}: expected tcp://HOST:PORT or ipc://DIR")
    if scheme == "ipc":
        return Endpoints.ipc(rest)
    if scheme != "tcp" or ":" not in rest:
        raise ValueError(f"--bind {bind!r}: expected tcp://HOST:PORT or ipc://DIR")
    host, port = rest.rsplit(":", 1)
    return Endpoints.tcp(host, int(port))


def free_base_port(host: str = "127.0.0.1", tries: int = 50) -> int:
    """A base port whose +1 and +2 are free too (an Endpoints.tcp triple), for tests and benchmarks on loopback."""
    for _ in range(tries):
        with socket.socket() as s:
            s.bind((host, 0))
            base = s.getsockname()[1]
        if base > 65000:
            continue
        ok = True
        for p in (base + 1, base + 2):
            with socket.socket() as s:
                try:
                    s.bind((host, p))
                except OSError:
                    ok = False
        if ok:
            return base
    raise RuntimeError(f"no free port triple on {host} after {tries} tries")


@dataclass(frozen=True)
class Received:
    header: m.Header
    msg: m.Message
    recv_time_ns: int  # receiver's time.monotonic_ns() right after the frame arrived
    peer: str = ""  # sender's CURVE public key (z85) when CURVE is on, else ""
    conn: int = -1  # the connection it came in on (its file descriptor on the receiver; -1 unknown)
    local: bool = True  # the sender is on this host (loopback tcp, ipc): its clock is ours
    frame: zmq.Frame | None = None  # the received frame (the decoded arrays are views on it)


@dataclass(frozen=True)
class ControlRequest(Received):
    routing_id: bytes = b""


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on 127.0.0.0/8, ::1 or 'localhost'. Everything else is remote."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        raise ValueError(f"endpoint {endpoint!r}: expected scheme://address")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp" or ";" in rest:
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', interface names, host names


def check_endpoint(endpoint: str, keys: object | None) -> None:
    """Refuse a non-loopback endpoint without CURVE keys."""
    if keys is None and not is_loopback_endpoint(endpoint):
        raise InsecureEndpointError(
            f"{endpoint} is not loopback: CURVE keys are required (generate them with "
            "hardware.protocol.keys.keys_generate / `robotstack keys generate`, then load_server_keys / "
            "load_client_keys); plain text is only allowed on 127.0.0.1, ::1, ipc:// and inproc://")


def _common(sock: zmq.Socket, endpoint: str) -> None:
    sock.linger = 0  # close never blocks on unsent messages
    if endpoint.startswith("tcp://"):
        sock.heartbeat_ivl, sock.heartbeat_timeout = 1000, 3000  # ZMTP pings find dead peers in ~3 s


def make_ipc_dir(endpoint: str) -> None:
    """ipc://DIR/name: create DIR (and its parents) if missing, owner-only (0o700), because libzmq's bind does not
    and fails with "No such file or directory". Owner-only because plain text is allowed on ipc://: the folder's
    permissions are then what keeps other local users off the sockets. An existing folder is left as it is."""
    if endpoint.startswith("ipc://"):
        os.makedirs(os.path.dirname(endpoint[len("ipc://"):]) or ".", mode=0o700, exist_ok=True)


def server_socket(ctx: zmq.Context, kind: int, endpoint: str, keys: CurveServerKeys | None,
                  **options) -> zmq.Socket:
    """A bound socket; CURVE server when ``keys`` (start a ZapAuthenticator on ``ctx`` first)."""
    check_endpoint(endpoint, keys)
    sock = ctx.socket(kind)
    _common(sock, endpoint)
    if keys is not None:
        sock.zap_domain = ZAP_DOMAIN
        sock.curve_server = True
        sock.curve_secretkey = keys.keypair.secret
        sock.curve_publickey = keys.keypair.public
    for name, value in options.items():
        setattr(sock, name, value)
    try:
        make_ipc_dir(endpoint)
        sock.bind(endpoint)
    except (zmq.ZMQError, OSError) as e:
        sock.close()
        raise RobotstackError(f"cannot bind {endpoint}: {e}") from None
    return sock


def client_socket(ctx: zmq.Context, kind: int, endpoint: str, keys: CurveClientKeys | None,
                  **options) -> zmq.Socket:
    check_endpoint(endpoint, keys)
    sock = ctx.socket(kind)
    _common(sock, endpoint)
    if keys is not None:
        sock.curve_serverkey = keys.server_public
        sock.curve_publickey = keys.keypair.public
        sock.curve_secretkey = keys.keypair.secret
    for name, value in options.items():
        setattr(sock, name, value)
    sock.connect(endpoint)
    return sock


class RejectCounter:
    """Counts rejected frames by reason; logs each reason at most once per ``log_every_s``."""

    def __init__(self, where: str, log_every_s: float = 1.0):
        self.where = where
        self.counts: collections.Counter[str] = collections.Counter()
        self._last_log: dict[str, float] = {}
        self._every = log_every_s

    def add(self, err: m.ProtocolError, peer: str = "") -> None:
        self.counts[err.reason] += 1
        now = time.monotonic()
        if now - self._last_log.get(err.reason, -1e9) >= self._every:
            self._last_log[err.reason] = now
            log.warning("%s: rejected frame%s (%s, %d so far): %s", self.where, f" from {peer}" if peer else "",
                        err.reason, self.counts[err.reason], err.detail)


def _peer(frame: zmq.Frame) -> str:
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:  # no ZAP handler ran for this connection (plain loopback)
        return ""


def _conn(frame: zmq.Frame) -> int:
    try:
        return int(frame.get(SRCFD))
    except zmq.ZMQError:
        return -1


def _local(frame: zmq.Frame) -> bool:
    try:
        addr = frame.get("Peer-Address")
    except zmq.ZMQError:  # ipc / inproc carry no address
        return True
    return addr.startswith("127.") or addr in ("::1", "")


def recv_nowait(sock: zmq.Socket, timeout_s: float = 0.0, multipart: bool = False):
    """One frame (or multipart message) waiting at most timeout_s, or None. The receive itself never blocks:
    poll() can report POLLIN while the frame is not yet receivable (a CURVE connection that completed its
    handshake but sent nothing, on a CONFLATE socket), and a blocking recv() then waits forever inside libzmq,
    deaf to signals. So: NOBLOCK, and zmq.Again means "nothing yet"."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if multipart:
                return sock.recv_multipart(zmq.NOBLOCK, copy=False)
            return sock.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(max(1, int(left * 1000))):
            return None


def _check_size(n: int, allowed: tuple[str, ...]) -> None:
    """Longer than any message this channel carries: too_large, before spending time on unpacking it."""
    limit = max(m.MESSAGE_TYPES[t].MAX_BYTES for t in allowed)
    if n > limit:
        raise m.ProtocolError(m.TOO_LARGE, f"{n} bytes > {limit}, the largest of {list(allowed)}")


def _receive(sock: zmq.Socket, timeout_s: float, allowed: tuple[str, ...], robot_id: str | None,
             rejects: RejectCounter) -> Received | None:
    """One frame within timeout_s (0 = do not wait), decoded and validated; None if nothing valid came."""
    frame = recv_nowait(sock, timeout_s)
    if frame is None:
        return None
    now = time.monotonic_ns()
    peer = _peer(frame)
    try:
        _check_size(len(frame), allowed)
        header, msg = m.decode(frame.buffer, robot_id=robot_id)
        if header.type not in allowed:
            raise m.ProtocolError(m.WRONG_CHANNEL, f"{header.type} is not carried here (only {list(allowed)})")
    except m.ProtocolError as e:
        rejects.add(e, peer)
        return None
    return Received(header, msg, now, peer, _conn(frame), _local(frame), frame=frame)


class _Sequencer:
    def __init__(self):
        self.seq = 0

    def next(self) -> int:
        self.seq += 1
        return self.seq


class ServerTransport:
    """Arm-server side: binds state PUB, command PULL, control ROUTER; CURVE + allow-list when ``keys``."""

    def __init__(self, robot_id: str, endpoints: Endpoints = Endpoints(), keys: CurveServerKeys | None = None):
        for ep in (endpoints.state, endpoints.command, endpoints.control):
            check_endpoint(ep, keys)
        self.robot_id = robot_id
        self.rejects = RejectCounter(f"server {robot_id}")
        self.dropped_sends = 0  # state frames / replies dropped because a send would have blocked
        self.disconnects = 0  # command connections closed (by the client, or by libzmq for an oversized frame)
        self._seq = _Sequencer()
        self.ctx = zmq.Context()  # own context: its ZAP handler belongs to this server alone
        self.auth = None
        self.auth = ZapAuthenticator(self.ctx, keys.allowed_clients).start() if keys is not None else None
        try:
            self.state_sock = server_socket(self.ctx, zmq.PUB, endpoints.state, keys, conflate=1)
            self.command_sock = server_socket(self.ctx, zmq.PULL, endpoints.command, keys, conflate=1,
                                              maxmsgsize=SMALL_MAX)
            self.control_sock = server_socket(self.ctx, zmq.ROUTER, endpoints.control, keys, rcvhwm=64,
                                              maxmsgsize=SMALL_MAX)
            # connection ends on the command socket, so per-connection sequencing forgets a closed connection
            # before its file descriptor is reused by the next one
            self._monitor = self.command_sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED)
        except BaseException:
            self.close()
            raise

    def publish_state(self, state: m.RobotState, send_time_ns: int | None = None) -> int:
        seq = self._seq.next()
        try:  # PUB never blocks by design; NOBLOCK makes sure of it (a full queue drops the frame)
            self.state_sock.send(state.to_bytes(self.robot_id, seq, send_time_ns), zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped_sends += 1
        return seq

    def recv_command(self, timeout_s: float = 0.0) -> Received | None:
        """The newest target (older ones were conflated away), or None."""
        return _receive(self.command_sock, timeout_s, COMMAND_TYPES, self.robot_id, self.rejects)

    def recv_control(self, timeout_s: float = 0.0) -> ControlRequest | None:
        """Next control request (queued, never conflated); answer it with ``reply``."""
        frames = recv_nowait(self.control_sock, timeout_s, multipart=True)
        if frames is None:
            return None
        now = time.monotonic_ns()
        peer = _peer(frames[-1])
        try:
            if len(frames) != 3 or frames[1].bytes != b"":
                raise m.ProtocolError(m.BAD_ENVELOPE, f"control request of {len(frames) - 1} frames; expected an "
                                                      "empty delimiter frame then one message frame")
            _check_size(len(frames[2]), REQUEST_TYPES)
            header, msg = m.decode(frames[2].buffer, robot_id=self.robot_id)
            if header.type not in REQUEST_TYPES:
                raise m.ProtocolError(m.WRONG_CHANNEL, f"{header.type} is not a control request")
        except m.ProtocolError as e:
            self.rejects.add(e, peer)
            return None
        return ControlRequest(header, msg, now, peer, _conn(frames[-1]), _local(frames[-1]),
                              routing_id=frames[0].bytes)

    def reply(self, request: ControlRequest, msg: m.ModeReply | m.Status | m.Description) -> int:
        seq = self._seq.next()
        try:  # a client that stopped reading must not stall the server: drop the reply instead
            self.control_sock.send_multipart([request.routing_id, b"", msg.to_bytes(self.robot_id, seq)], zmq.NOBLOCK)
        except zmq.Again:
            self.dropped_sends += 1
        return seq

    def closed_connections(self) -> list[int]:
        """Command connections (``Received.conn``) closed since the last call; never blocks."""
        out = []
        while (ev := recv_nowait(self._monitor, 0.0, multipart=True)) is not None:
            event, value = struct.unpack("=HI", ev[0].bytes[:6])
            if event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                out.append(value)
                self.disconnects += 1
        return out

    def close(self) -> None:
        if getattr(self, "_monitor", None) is not None:
            self.command_sock.disable_monitor()
            self._monitor.close()
        for name in ("state_sock", "command_sock", "control_sock"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close()
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()

    def __enter__(self) -> "ServerTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ClientTransport:
    """Runtime side: connects SUB (state), PUSH (commands), DEALER (control)."""

    def __init__(self, robot_id: str, endpoints: Endpoints = Endpoints(), keys: CurveClientKeys | None = None):
        for ep in (endpoints.state, endpoints.command, endpoints.control):
            check_endpoint(ep, keys)
        self.robot_id = robot_id
        self.rejects = RejectCounter(f"client {robot_id}")
        self._seq = _Sequencer()
        self.last_request_sent_ns = 0  # send time of the latest control request (for clock_offset_ns)
        self.dropped = 0  # targets not queued because no connection to the server existed
        self._last_state_frame: zmq.Frame | None = None  # for rehearse()
        self._last_target: tuple[m.Message, int, int] | None = None
        self.ctx = zmq.Context()
        self.state_sock = client_socket(self.ctx, zmq.SUB, endpoints.state, keys, conflate=1,
                                        maxmsgsize=m.MAX_FRAME_BYTES, subscribe=b"")
        self.command_sock = client_socket(self.ctx, zmq.PUSH, endpoints.command, keys, conflate=1)
        # immediate: queue requests only on a completed (authenticated) connection, so a refused key or a
        # missing server shows up as ControlTimeout instead of requests piling up.
        self.control_sock = client_socket(self.ctx, zmq.DEALER, endpoints.control, keys, immediate=1,
                                          maxmsgsize=SMALL_MAX)

    def recv_state(self, timeout_s: float = 0.0) -> Received | None:
        """The newest state (CONFLATE keeps one), waiting at most timeout_s; None if none or rejected."""
        got = _receive(self.state_sock, timeout_s, (m.RobotState.TYPE,), self.robot_id, self.rejects)
        if got is not None:
            self._last_state_frame = got.frame
        return got

    def rehearse(self) -> None:
        """Decode the last state frame and encode the last target once more, discarding both, shortly before the
        next state is due: Python code run once every few ms runs several times slower than the same code run back
        to back (its code and data leave the CPU's caches; README, bench_control), so this warms the path."""
        if self._last_state_frame is not None:
            m.decode(self._last_state_frame.buffer, robot_id=self.robot_id)
        if self._last_target is not None:
            target, seq, sent_ns = self._last_target
            target.to_bytes(self.robot_id, seq, sent_ns)

    def send_target(self, target: m.JointTarget | m.CartesianTarget, send_time_ns: int | None = None) -> int | None:
        """Queue a target; never blocks, a newer one replaces it while unsent. Returns its seq, or None when
        there is no connection to the server right now (the target is dropped and counted in ``dropped``)."""
        if target.TYPE not in COMMAND_TYPES:
            raise m.ProtocolError(m.WRONG_CHANNEL, f"{target.TYPE} is not a command")
        seq = self._seq.next()
        sent_ns = time.monotonic_ns() if send_time_ns is None else send_time_ns
        try:
            self.command_sock.send(target.to_bytes(self.robot_id, seq, sent_ns), zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return None
        self._last_target = (target, seq, sent_ns)
        return seq

    def request(self, msg: m.Heartbeat | m.EStop | m.Reset | m.ModeRequest | m.Describe,
                timeout_s: float = 1.0) -> Received:
        """Send a control request and wait for its reply; raises ControlTimeout after timeout_s."""
        if msg.TYPE not in REQUEST_TYPES:
            raise m.ProtocolError(m.WRONG_CHANNEL, f"{msg.TYPE} is not a control request")
        deadline = time.monotonic() + timeout_s
        if not self.control_sock.poll(int(timeout_s * 1000), zmq.POLLOUT):
            raise ControlTimeout(f"control channel not connected after {timeout_s:.3f} s (server down, or it "
                                 "refused our CURVE key)")
        seq = self._seq.next()
        self.last_request_sent_ns = time.monotonic_ns()
        self.control_sock.send_multipart([b"", msg.to_bytes(self.robot_id, seq, self.last_request_sent_ns)],
                                         zmq.NOBLOCK)
        while (left := deadline - time.monotonic()) > 0:
            frames = recv_nowait(self.control_sock, left, multipart=True)
            if frames is None:
                break
            now = time.monotonic_ns()
            try:
                if len(frames) != 2 or frames[0].bytes != b"":
                    raise m.ProtocolError(m.BAD_ENVELOPE, f"reply of {len(frames)} frames")
                header, reply = m.decode(frames[1].buffer, robot_id=self.robot_id)
                if header.type not in REPLY_TYPES:
                    raise m.ProtocolError(m.WRONG_CHANNEL, f"{header.type} is not a reply")
            except m.ProtocolError as e:
                self.rejects.add(e)
                continue
            if reply.reply_to_seq == seq:
                return Received(header, reply, now, _peer(frames[1]))
            log.debug("dropped a late reply to seq %s (waiting for %d)", reply.reply_to_seq, seq)
        raise ControlTimeout(f"no reply to {msg.TYPE} seq {seq} within {timeout_s:.3f} s (server down or "
                             "overloaded)")

    def close(self) -> None:
        for sock in (self.state_sock, self.command_sock, self.control_sock):
            sock.close()
        self.ctx.term()

    def __enter__(self) -> "ClientTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def clock_offset_ns(request_sent_ns: int, reply: Received) -> int:
    """Estimated server-clock minus client-clock (NTP-style midpoint) from a Heartbeat -> Status round trip."""
    return reply.msg.server_time_ns - (request_sent_ns + reply.recv_time_ns) // 2
