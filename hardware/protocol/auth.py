"""ZAP handler: admit CURVE clients whose public key is on an allow-list, refuse and log everyone else.

libzmq asks the ZAP handler of a socket's context (inproc://zeromq.zap.01, RFC 27) about every CURVE
handshake; with *no* handler it admits any client that knows the server public key, so a server must start
this before it binds. One handler per context; it runs in a daemon thread with its own REP socket.
The user id sent back (the client's z85 public key) shows up as the ``User-Id`` property of every frame the
client sends, which is how receivers log who sent a command.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import zmq
from zmq.utils import z85

log = logging.getLogger("robotstack.hardware.protocol.auth")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"


class ZapAuthenticator:
    """Allow-list authenticator. ``refused`` counts refusals by reason; ``admitted`` by client key."""

    def __init__(self, ctx: zmq.Context, allowed_clients: frozenset[bytes] | set[bytes]):
        self.ctx = ctx
        self.allowed = frozenset(k.strip() for k in allowed_clients)
        self.refused: collections.Counter[str] = collections.Counter()
        self.admitted: collections.Counter[bytes] = collections.Counter()
        self._last_log: dict[bytes, float] = {}  # refused key -> last warning (a refused client retries ~10/s)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="zap-authenticator", daemon=True)

    def start(self) -> "ZapAuthenticator":
        self._thread.start()
        self._ready.wait(5.0)
        if self._error is not None:
            raise RuntimeError(f"ZAP handler could not bind {ZAP_ENDPOINT}: {self._error} (another authenticator "
                               "already runs in this context?)")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def _run(self) -> None:
        sock = self.ctx.socket(zmq.REP)
        sock.linger = 0
        try:
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as e:
            self._error = e
            self._ready.set()
            sock.close()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                if sock.poll(100):
                    sock.send_multipart(self._handle(sock.recv_multipart()))
        finally:
            sock.close()

    def _handle(self, frames: list[bytes]) -> list[bytes]:
        # request: version, request_id, domain, address, identity, mechanism, credentials...
        if len(frames) < 6:
            self.refused["bad_request"] += 1
            log.warning("malformed ZAP request with %d frames refused", len(frames))
            return [b"1.0", frames[1] if len(frames) > 1 else b"", b"400", b"malformed ZAP request", b"", b""]
        version, request_id, _domain, address, _identity, mechanism, *creds = frames
        peer = address.decode("ascii", "replace") or "?"
        if version != b"1.0":
            self.refused["bad_version"] += 1
            return [b"1.0", request_id, b"400", b"unsupported ZAP version", b"", b""]
        if mechanism != b"CURVE" or len(creds) != 1 or len(creds[0]) != 32:
            self.refused["not_curve"] += 1
            log.warning("refused %s client from %s: only CURVE is accepted",
                        mechanism.decode("ascii", "replace"), peer)
            return [b"1.0", request_id, b"400", b"CURVE required", b"", b""]
        key = z85.encode(creds[0])
        if key not in self.allowed:
            self.refused["unknown_key"] += 1
            now = time.monotonic()
            if len(self._last_log) > 1024:  # bounded memory under a flood of random keys
                self._last_log.clear()
            if now - self._last_log.get(key, -1e9) >= 10.0:
                self._last_log[key] = now
                log.warning("refused CURVE client from %s: public key %s is not on the allow-list "
                            "(%d refusals so far; repeats are logged every 10 s)",
                            peer, key.decode("ascii"), self.refused["unknown_key"])
            return [b"1.0", request_id, b"400", b"unknown client key", b"", b""]
        if self.admitted[key] == 0:
            log.info("admitted CURVE client %s from %s", key.decode("ascii"), peer)
        self.admitted[key] += 1
        return [b"1.0", request_id, b"200", b"OK", key, b""]
