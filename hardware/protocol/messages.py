"""Wire messages between the runtime controller and an arm server: types, encode, decode.

One ZMQ frame = one msgpack array ``[version, type, robot_id, seq, send_time_ns, body]``; ``body`` is a map
with string keys. An ndarray travels as the map ``{"dtype": str, "shape": [int, ...], "data": bin}``
(little-endian, C order, dtype from a whitelist). No pickle, no msgpack ext types. docs/protocol.md is the
reference for other languages; this module is the reference implementation.

``decode`` validates everything and raises ``ProtocolError(reason, detail)``; ``reason`` is one of
``REASONS`` so a receiver can count rejects by reason.

Glossary: Dq arm joints (1..32), Do object-state dim, H/W image height/width.
Times: every ``*_ns`` value is an int of nanoseconds on the *sender's* CLOCK_MONOTONIC
(``time.monotonic_ns()``), except fields named ``server_*`` / ``state_time_ns`` / ``last_target_applied_ns``
(server clock) and ``last_target_sent_ns`` (an echo of the client's own send time).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack
import numpy as np

from robotstack.core.errors import RobotstackError

PROTOCOL_VERSION = 2  # 2: describe / description added

# --- reject reasons ---------------------------------------------------------------------------------------
TOO_LARGE = "too_large"  # frame longer than the limit of its message type (or the global limit)
MALFORMED = "malformed"  # not one complete msgpack object within msgpack limits
BAD_ENVELOPE = "bad_envelope"  # top level is not [version, type, robot_id, seq, send_time_ns, body]
VERSION = "version"  # protocol version differs from PROTOCOL_VERSION
UNKNOWN_TYPE = "unknown_type"  # message type name not known
BAD_HEADER = "bad_header"  # robot_id / seq / send_time_ns of the wrong type or out of range
WRONG_ROBOT = "wrong_robot"  # robot_id differs from the one the receiver expects
WRONG_CHANNEL = "wrong_channel"  # a valid message on a socket that does not carry its type
MISSING_FIELD = "missing_field"
UNKNOWN_FIELD = "unknown_field"
BAD_TYPE = "bad_type"  # a field of the wrong msgpack type
BAD_ARRAY = "bad_array"  # array map without exactly dtype/shape/data, or data length != prod(shape)*itemsize
BAD_DTYPE = "bad_dtype"  # dtype not in the whitelist or not allowed for this field
BAD_SHAPE = "bad_shape"  # shape wrong for the field or inconsistent with another field
NOT_FINITE = "not_finite"  # NaN or Inf in a float array
OUT_OF_RANGE = "out_of_range"  # value outside its documented range (string length, quaternion norm, expiry, ...)

REASONS = (TOO_LARGE, MALFORMED, BAD_ENVELOPE, VERSION, UNKNOWN_TYPE, BAD_HEADER, WRONG_ROBOT, WRONG_CHANNEL,
           MISSING_FIELD, UNKNOWN_FIELD, BAD_TYPE, BAD_ARRAY, BAD_DTYPE, BAD_SHAPE, NOT_FINITE, OUT_OF_RANGE)


class ProtocolError(RobotstackError):
    """A message failed validation. ``reason`` is one of ``REASONS``; ``detail`` says what and where."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


# --- limits -----------------------------------------------------------------------------------------------
KIB, MIB = 1024, 1024 * 1024
MAX_FRAME_BYTES = 16 * MIB  # no message of any type is longer
MAX_DOF = 32
MAX_OBJECT_DIM = 256
MAX_CAMERAS = 8
MAX_IMAGE_SIDE = 4096
MAX_NDIM = 4
MAX_VALIDITY_NS = 10_000_000_000  # a target may not claim validity for longer than 10 s after it was sent
MAX_TARGET_LEAD_NS = 60_000_000_000  # target_time_ns within [send - 1 s, send + 60 s]
MAX_TARGET_LAG_NS = 1_000_000_000
QUAT_NORM_TOL = 1e-3
U64_MAX = 2**64 - 1
I64_MAX = 2**63 - 1
ROBOT_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")  # camera names, modes, fault codes, sources, reject reasons
MAX_TEXT = 256  # free text (detail, reason)
MAX_LIST = 32  # faults, reject counters

# msgpack decoder limits: nothing legitimate comes close; they bound memory before validation runs.
_UNPACK_LIMITS = dict(max_str_len=4 * KIB, max_bin_len=MAX_FRAME_BYTES, max_array_len=64, max_map_len=64,
                      max_ext_len=0)

# --- arrays -----------------------------------------------------------------------------------------------
DTYPES = {name: np.dtype(name).newbyteorder("<") for name in
          ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32",
           "float64")}
FLOATS = ("float32", "float64")
_NAME_OF = {dt: name for name, dt in DTYPES.items()}  # dtype.name is slow; a dict lookup is not


def _dtype_name(dt: np.dtype) -> str:
    return _NAME_OF.get(dt) or dt.name


def encode_array(arr: np.ndarray) -> dict[str, Any]:
    """ndarray -> {"dtype", "shape", "data"}; little-endian C-order bytes, no copy when already so."""
    arr = np.asarray(arr)
    name = _dtype_name(arr.dtype)
    if name not in DTYPES:
        raise ProtocolError(BAD_DTYPE, f"dtype {arr.dtype} is not one of {sorted(DTYPES)}")
    arr = np.ascontiguousarray(arr, dtype=DTYPES[name])
    return {"dtype": name, "shape": list(arr.shape), "data": memoryview(arr).cast("B")}


_ARRAY_KEYS = frozenset(("dtype", "shape", "data"))


def _shape_ok(shape: Any) -> bool:
    if type(shape) is not list or len(shape) > MAX_NDIM:
        return False
    for d in shape:  # a loop, not all(<genexpr>): this runs for every array of every state frame
        if type(d) is not int or not 0 <= d <= MAX_FRAME_BYTES:
            return False
    return True


def decode_array(obj: Any, where: str) -> np.ndarray:
    """{"dtype", "shape", "data"} -> read-only ndarray (a view on the received bytes)."""
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_TYPE, f"{where}: expected an array map, got {type(obj).__name__}")
    if obj.keys() != _ARRAY_KEYS:
        raise ProtocolError(BAD_ARRAY, f"{where}: array map keys {sorted(map(repr, obj))} != ['data', 'dtype', 'shape']")
    name, shape, data = obj["dtype"], obj["shape"], obj["data"]
    dtype = DTYPES.get(name) if type(name) is str else None
    if dtype is None:
        raise ProtocolError(BAD_DTYPE, f"{where}: dtype {name!r} is not one of {sorted(DTYPES)}")
    if not _shape_ok(shape):
        raise ProtocolError(BAD_SHAPE, f"{where}: shape {shape!r} is not a list of <= {MAX_NDIM} ints >= 0")
    if not isinstance(data, bytes):
        raise ProtocolError(BAD_TYPE, f"{where}: data is {type(data).__name__}, expected bin")
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise ProtocolError(BAD_ARRAY, f"{where}: {len(data)} data bytes for shape {shape} {name}")
    arr = np.frombuffer(data, dtype=dtype)
    if len(shape) != 1:
        arr = arr.reshape(shape)
    if name == "bool" and arr.size and np.frombuffer(data, np.uint8).max() > 1:
        raise ProtocolError(OUT_OF_RANGE, f"{where}: bool bytes must be 0 or 1")
    return arr


# --- field specs ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arr:
    """A float/int array field. ``shape`` entries: an int (fixed) or a symbol shared across the message."""

    shape: tuple[int | str, ...]
    dtypes: tuple[str, ...] = FLOATS
    optional: bool = False


@dataclass(frozen=True)
class Int:
    lo: int = 0
    hi: int = I64_MAX
    optional: bool = False


@dataclass(frozen=True)
class Str:
    pattern: re.Pattern | None = None  # None: free text up to MAX_TEXT characters
    optional: bool = False


@dataclass(frozen=True)
class Bool:
    optional: bool = False


@dataclass(frozen=True)
class NameList:  # list of NAME_RE strings
    optional: bool = False


@dataclass(frozen=True)
class Counts:  # map NAME_RE -> int >= 0
    optional: bool = False


@dataclass(frozen=True)
class Cameras:  # map NAME_RE -> CameraFrame
    optional: bool = False


_SYMBOL_MAX = {"Dq": MAX_DOF, "Do": MAX_OBJECT_DIM, "Dg": MAX_OBJECT_DIM}


@dataclass
class CameraFrame:
    """One image: uint8 (H, W, 3) RGB, uint8 (H, W) mono or uint16 (H, W) depth in mm; capture time on the
    server clock."""

    image: np.ndarray
    capture_time_ns: int


def _check_array(arr: np.ndarray, spec: Arr, where: str, dims: dict[str, int]) -> None:
    name = _dtype_name(arr.dtype)
    if name not in spec.dtypes:
        raise ProtocolError(BAD_DTYPE, f"{where}: dtype {name}, expected one of {list(spec.dtypes)}")
    if arr.ndim != len(spec.shape):
        raise ProtocolError(BAD_SHAPE, f"{where}: shape {arr.shape}, expected {spec.shape}")
    for n, want in zip(arr.shape, spec.shape):
        if isinstance(want, int):
            if n != want:
                raise ProtocolError(BAD_SHAPE, f"{where}: shape {arr.shape}, expected {spec.shape}")
        elif not 1 <= n <= _SYMBOL_MAX[want]:
            raise ProtocolError(BAD_SHAPE, f"{where}: {want}={n} outside 1..{_SYMBOL_MAX[want]}")
        elif dims.setdefault(want, n) != n:
            raise ProtocolError(BAD_SHAPE, f"{where}: {want}={n} but another field has {want}={dims[want]}")
    if name in FLOATS and not _all_finite(arr):
        raise ProtocolError(NOT_FINITE, f"{where}: NaN or Inf")


def _all_finite(arr: np.ndarray) -> bool:
    # a state frame's arrays are a few numbers each: math.isfinite over a list beats numpy's per-call overhead
    # (1 us vs 4 us for 7 values); large ones (images are not float) go through numpy
    if arr.size <= 64:
        return all(map(math.isfinite, arr.ravel().tolist()))
    return bool(np.isfinite(arr).all())


def _check_image(img: np.ndarray, where: str) -> None:
    ok = ((img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3)
          or (img.dtype in (np.uint8, np.uint16) and img.ndim == 2))
    if not ok:
        raise ProtocolError(BAD_SHAPE, f"{where}: {img.dtype} {img.shape}; expected uint8 (H,W,3), uint8 (H,W) "
                                       "or uint16 (H,W)")
    if not all(1 <= n <= MAX_IMAGE_SIDE for n in img.shape[:2]):
        raise ProtocolError(BAD_SHAPE, f"{where}: image side outside 1..{MAX_IMAGE_SIDE}")


def _check_name(v: Any, where: str) -> None:
    if not isinstance(v, str):
        raise ProtocolError(BAD_TYPE, f"{where}: expected str, got {type(v).__name__}")
    if not NAME_RE.fullmatch(v):
        raise ProtocolError(OUT_OF_RANGE, f"{where}: {v[:40]!r} does not match {NAME_RE.pattern}")


def _check_int(v: Any, lo: int, hi: int, where: str) -> None:
    if type(v) is not int:  # bool is an int subclass: refuse it
        raise ProtocolError(BAD_TYPE, f"{where}: expected int, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ProtocolError(OUT_OF_RANGE, f"{where}: {v} outside {lo}..{hi}")


def _wire_value(spec: Any, v: Any, where: str, dims: dict[str, int], decoding: bool) -> Any:
    """Validate one field value; return its python value (decoding) or its msgpack value (encoding)."""
    if isinstance(spec, Arr):
        arr = decode_array(v, where) if decoding else np.asarray(v)
        _check_array(arr, spec, where, dims)
        return arr if decoding else encode_array(arr)
    if isinstance(spec, Int):
        _check_int(v, spec.lo, spec.hi, where)
        return v
    if isinstance(spec, Bool):
        if type(v) is not bool:
            raise ProtocolError(BAD_TYPE, f"{where}: expected bool, got {type(v).__name__}")
        return v
    if isinstance(spec, Str):
        if not isinstance(v, str):
            raise ProtocolError(BAD_TYPE, f"{where}: expected str, got {type(v).__name__}")
        if spec.pattern is not None and not spec.pattern.fullmatch(v):
            raise ProtocolError(OUT_OF_RANGE, f"{where}: {v[:40]!r} does not match {spec.pattern.pattern}")
        if len(v) > MAX_TEXT:
            raise ProtocolError(OUT_OF_RANGE, f"{where}: {len(v)} characters > {MAX_TEXT}")
        return v
    if isinstance(spec, NameList):
        if not isinstance(v, (list, tuple)):
            raise ProtocolError(BAD_TYPE, f"{where}: expected a list, got {type(v).__name__}")
        if len(v) > MAX_LIST:
            raise ProtocolError(OUT_OF_RANGE, f"{where}: {len(v)} entries > {MAX_LIST}")
        for i, s in enumerate(v):
            _check_name(s, f"{where}[{i}]")
        return list(v)
    if isinstance(spec, Counts):
        if not isinstance(v, dict):
            raise ProtocolError(BAD_TYPE, f"{where}: expected a map, got {type(v).__name__}")
        if len(v) > MAX_LIST:
            raise ProtocolError(OUT_OF_RANGE, f"{where}: {len(v)} entries > {MAX_LIST}")
        for k, n in v.items():
            _check_name(k, f"{where} key")
            _check_int(n, 0, U64_MAX, f"{where}[{k}]")
        return dict(v)
    if isinstance(spec, Cameras):
        return _wire_cameras(v, where, decoding)
    raise AssertionError(spec)


def _vector_codec(spec: Arr, where: str):
    """Decode and encode functions for one 1-D float array field: the checks of decode_array + _check_array
    inlined for the frames every control step carries (a state has ~8 such fields). Only the common valid case is
    handled here; anything else goes to the generic path, which raises the precise error (so the fast path can
    never accept what the generic one would refuse, and never words an error differently)."""
    want = spec.shape[0]
    sym_max = None if isinstance(want, int) else _SYMBOL_MAX[want]
    itemsize = {name: DTYPES[name].itemsize for name in spec.dtypes}
    isfinite = math.isfinite

    def decode_field(v: Any, dims: dict[str, int]) -> np.ndarray:
        if type(v) is dict and v.keys() == _ARRAY_KEYS:
            name, shape, data = v["dtype"], v["shape"], v["data"]
            size = itemsize.get(name) if type(name) is str else None
            if size and type(shape) is list and len(shape) == 1 and type(data) is bytes:
                n = shape[0]
                if (type(n) is int and len(data) == n * size and n <= 64
                        and (n == want if sym_max is None else 1 <= n <= sym_max and dims.setdefault(want, n) == n)):
                    arr = np.frombuffer(data, dtype=DTYPES[name])
                    if all(map(isfinite, arr.tolist())):
                        return arr
        return _wire_value(spec, v, where, dims, decoding=True)

    def encode_field(v: Any, dims: dict[str, int]) -> Any:
        if type(v) is np.ndarray and v.ndim == 1 and v.flags.c_contiguous:
            name = _NAME_OF.get(v.dtype)
            n = len(v)
            if name in itemsize and n <= 64 and (n == want if sym_max is None else
                                                 1 <= n <= sym_max and dims.setdefault(want, n) == n):
                if all(map(isfinite, v.tolist())):
                    return {"dtype": name, "shape": [n], "data": memoryview(v).cast("B")}
        return _wire_value(spec, v, where, dims, decoding=False)

    return decode_field, encode_field


def _generic_codec(spec: Any, where: str):
    return (lambda v, dims: _wire_value(spec, v, where, dims, decoding=True),
            lambda v, dims: _wire_value(spec, v, where, dims, decoding=False))


def _int_codec(spec: Int, where: str):
    lo, hi = spec.lo, spec.hi

    def check(v: Any, dims: dict[str, int]) -> int:
        if type(v) is int and lo <= v <= hi:
            return v
        return _wire_value(spec, v, where, dims, decoding=True)  # raises the precise error

    return check, check


def _field_codecs(cls: type["Message"]) -> tuple[tuple[str, bool, Any, Any], ...]:
    """(name, optional, decode_field, encode_field) per schema field, built once per message type."""
    out = []
    for name, spec in cls.SCHEMA.items():
        where = f"{cls.TYPE}.{name}"
        if isinstance(spec, Arr) and len(spec.shape) == 1 and set(spec.dtypes) <= set(FLOATS):
            codec = _vector_codec(spec, where)
        elif isinstance(spec, Int):
            codec = _int_codec(spec, where)
        else:
            codec = _generic_codec(spec, where)
        out.append((name, spec.optional, *codec))
    return tuple(out)


def _wire_cameras(v: Any, where: str, decoding: bool) -> Any:
    if not isinstance(v, dict):
        raise ProtocolError(BAD_TYPE, f"{where}: expected a map of camera frames, got {type(v).__name__}")
    if len(v) > MAX_CAMERAS:
        raise ProtocolError(OUT_OF_RANGE, f"{where}: {len(v)} cameras > {MAX_CAMERAS}")
    out = {}
    for name, frame in v.items():
        _check_name(name, f"{where} key")
        w = f"{where}[{name}]"
        if decoding:
            if not isinstance(frame, dict):
                raise ProtocolError(BAD_TYPE, f"{w}: expected a map, got {type(frame).__name__}")
            if set(frame) != {"image", "capture_time_ns"}:
                raise ProtocolError(MISSING_FIELD if len(frame) < 2 else UNKNOWN_FIELD,
                                    f"{w}: keys {sorted(map(repr, frame))} != ['capture_time_ns', 'image']")
            img, t = decode_array(frame["image"], f"{w}.image"), frame["capture_time_ns"]
        else:
            if not isinstance(frame, CameraFrame):
                raise ProtocolError(BAD_TYPE, f"{w}: expected CameraFrame, got {type(frame).__name__}")
            img, t = np.asarray(frame.image), frame.capture_time_ns
        _check_image(img, f"{w}.image")
        _check_int(t, 0, I64_MAX, f"{w}.capture_time_ns")
        out[name] = CameraFrame(img, t) if decoding else {"image": encode_array(img), "capture_time_ns": t}
    return out


# --- header and messages ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Header:
    robot_id: str
    seq: int  # per-sender counter, 0..2**64-1
    send_time_ns: int  # sender's time.monotonic_ns() when encoded
    version: int = PROTOCOL_VERSION
    type: str = ""  # filled in by decode


class Message:
    """Base of every message dataclass. ``TYPE`` is the wire name, ``SCHEMA`` maps field -> spec."""

    TYPE: ClassVar[str]
    SCHEMA: ClassVar[dict[str, Any]]
    MAX_BYTES: ClassVar[int]

    def to_bytes(self, robot_id: str, seq: int, send_time_ns: int | None = None) -> bytes:
        t = time.monotonic_ns() if send_time_ns is None else send_time_ns
        return encode(Header(robot_id, seq, t), self)

    @classmethod
    def from_bytes(cls, data: bytes, robot_id: str | None = None) -> tuple[Header, "Message"]:
        header, msg = decode(data, robot_id=robot_id)
        if not isinstance(msg, cls):
            raise ProtocolError(WRONG_CHANNEL, f"expected {cls.TYPE}, got {header.type}")
        return header, msg

    def _check(self, header: Header) -> None:
        """Cross-field checks (needs the header for time windows). Raise ProtocolError."""


def _check_quat(q: np.ndarray, where: str) -> None:
    n = math.hypot(*q.tolist())  # a 4-vector: math beats numpy's per-call overhead ~10x
    if abs(n - 1.0) > QUAT_NORM_TOL:
        raise ProtocolError(OUT_OF_RANGE, f"{where}: quaternion norm {n:.6f}, expected 1 +- {QUAT_NORM_TOL}")


def _check_target_times(target_time_ns: int, expires_ns: int, header: Header) -> None:
    t = header.send_time_ns
    if not t < expires_ns <= t + MAX_VALIDITY_NS:
        raise ProtocolError(OUT_OF_RANGE, f"expires_ns - send_time_ns = {expires_ns - t} ns, expected in "
                                          f"(0, {MAX_VALIDITY_NS}]")
    if not t - MAX_TARGET_LAG_NS <= target_time_ns <= t + MAX_TARGET_LEAD_NS:
        raise ProtocolError(OUT_OF_RANGE, f"target_time_ns - send_time_ns = {target_time_ns - t} ns, expected in "
                                          f"[-{MAX_TARGET_LAG_NS}, {MAX_TARGET_LEAD_NS}]")


@dataclass
class RobotState(Message):
    """Server -> client, PUB/SUB, latest wins. Times are on the server clock unless noted."""

    TYPE = "state"
    MAX_BYTES = MAX_FRAME_BYTES  # camera frames make it large; without cameras it is about 1 KiB
    SCHEMA = {
        "joint_pos": Arr(("Dq",)), "joint_vel": Arr(("Dq",)), "joint_effort": Arr(("Dq",), optional=True),
        "gripper": Arr((1,), optional=True), "eef_pos": Arr((3,), optional=True),
        "eef_quat": Arr((4,), optional=True), "object_state": Arr(("Do",), optional=True),
        "goal": Arr(("Dg",), optional=True), "cameras": Cameras(optional=True),
        "mode": Str(NAME_RE), "estop": Bool(), "state_time_ns": Int(),
        "last_target_seq": Int(0, U64_MAX, optional=True), "last_target_sent_ns": Int(optional=True),
        "last_target_applied_ns": Int(optional=True),
    }
    joint_pos: np.ndarray  # (Dq,) rad
    joint_vel: np.ndarray  # (Dq,) rad/s
    state_time_ns: int  # when the joint state was sampled (server clock)
    mode: str = "idle"
    estop: bool = False
    joint_effort: np.ndarray | None = None  # (Dq,) Nm
    gripper: np.ndarray | None = None  # (1,) finger opening, m
    eef_pos: np.ndarray | None = None  # (3,) m, base frame
    eef_quat: np.ndarray | None = None  # (4,) w, x, y, z
    object_state: np.ndarray | None = None  # (Do,) perception: per object pos(3) + quat(4)
    goal: np.ndarray | None = None  # (Dg,)
    cameras: dict[str, CameraFrame] | None = None
    last_target_seq: int | None = None  # header seq of the last target applied
    last_target_sent_ns: int | None = None  # that target's header send_time_ns (client clock, echoed)
    last_target_applied_ns: int | None = None  # when it was applied (server clock)

    def _check(self, header: Header) -> None:
        if (self.eef_pos is None) != (self.eef_quat is None):
            raise ProtocolError(MISSING_FIELD, "eef_pos and eef_quat come together")
        if self.eef_quat is not None:
            _check_quat(self.eef_quat, "eef_quat")
        last = (self.last_target_seq, self.last_target_sent_ns, self.last_target_applied_ns)
        if any(v is None for v in last) and any(v is not None for v in last):
            raise ProtocolError(MISSING_FIELD, "last_target_seq/_sent_ns/_applied_ns come together")


@dataclass
class JointTarget(Message):
    """Client -> server, latest wins. Reach ``positions`` at ``target_time_ns``; drop it after ``expires_ns``
    (both on the sender's clock, see docs/protocol.md "Clocks")."""

    TYPE = "joint_target"
    MAX_BYTES = 4 * KIB
    SCHEMA = {"positions": Arr(("Dq",)), "velocities": Arr(("Dq",), optional=True),
              "gripper": Arr((1,), optional=True), "target_time_ns": Int(), "expires_ns": Int()}
    positions: np.ndarray  # (Dq,) rad
    target_time_ns: int
    expires_ns: int
    velocities: np.ndarray | None = None  # (Dq,) rad/s feed-forward
    gripper: np.ndarray | None = None  # (1,) finger opening, m

    @classmethod
    def make(cls, positions, *, reach_in_s: float = 0.0, valid_for_s: float = 0.1, now_ns: int | None = None,
             **kw) -> "JointTarget":
        now = time.monotonic_ns() if now_ns is None else now_ns
        return cls(np.asarray(positions), now + int(reach_in_s * 1e9), now + int(valid_for_s * 1e9), **kw)

    def _check(self, header: Header) -> None:
        _check_target_times(self.target_time_ns, self.expires_ns, header)


@dataclass
class CartesianTarget(Message):
    """Client -> server, latest wins. End-effector pose in the base frame; times as in JointTarget."""

    TYPE = "cartesian_target"
    MAX_BYTES = 4 * KIB
    SCHEMA = {"pos": Arr((3,)), "quat": Arr((4,)), "gripper": Arr((1,), optional=True),
              "target_time_ns": Int(), "expires_ns": Int()}
    pos: np.ndarray  # (3,) m
    quat: np.ndarray  # (4,) w, x, y, z, unit norm
    target_time_ns: int
    expires_ns: int
    gripper: np.ndarray | None = None

    @classmethod
    def make(cls, pos, quat, *, reach_in_s: float = 0.0, valid_for_s: float = 0.1, now_ns: int | None = None,
             **kw) -> "CartesianTarget":
        now = time.monotonic_ns() if now_ns is None else now_ns
        return cls(np.asarray(pos), np.asarray(quat), now + int(reach_in_s * 1e9), now + int(valid_for_s * 1e9),
                   **kw)

    def _check(self, header: Header) -> None:
        _check_quat(self.quat, "quat")
        _check_target_times(self.target_time_ns, self.expires_ns, header)


@dataclass
class Heartbeat(Message):
    """Client -> server request (control channel); the reply is a Status. Also a clock-offset probe."""

    TYPE = "heartbeat"
    MAX_BYTES = 512
    SCHEMA = {"source": Str(NAME_RE)}
    source: str = "runtime"


@dataclass
class EStop(Message):
    """Client -> server request (control channel): engage (or release) the software stop; reply Status."""

    TYPE = "estop"
    MAX_BYTES = 1 * KIB
    SCHEMA = {"engage": Bool(), "reason": Str()}
    engage: bool = True
    reason: str = ""


@dataclass
class Reset(Message):
    """Client -> server request (control channel); reply Status."""

    TYPE = "reset"
    MAX_BYTES = 1 * KIB
    SCHEMA = {"clear_faults": Bool(), "go_home": Bool(), "home_joint_pos": Arr(("Dq",), optional=True)}
    clear_faults: bool = True
    go_home: bool = True
    home_joint_pos: np.ndarray | None = None  # (Dq,) rad; None = the server's configured home


@dataclass
class ModeRequest(Message):
    """Client -> server request (control channel); reply ModeReply."""

    TYPE = "mode_request"
    MAX_BYTES = 512
    SCHEMA = {"mode": Str(NAME_RE)}
    mode: str


@dataclass
class ModeReply(Message):
    TYPE = "mode_reply"
    MAX_BYTES = 1 * KIB
    SCHEMA = {"reply_to_seq": Int(0, U64_MAX), "accepted": Bool(), "mode": Str(NAME_RE), "detail": Str()}
    reply_to_seq: int  # header seq of the ModeRequest
    accepted: bool
    mode: str  # the mode in force after the request
    detail: str = ""


@dataclass
class Status(Message):
    """Server -> client reply to Heartbeat, EStop, Reset (and to malformed requests, reply_to_seq None)."""

    TYPE = "status"
    MAX_BYTES = 8 * KIB
    SCHEMA = {"reply_to_seq": Int(0, U64_MAX, optional=True), "ok": Bool(), "mode": Str(NAME_RE),
              "estop": Bool(), "faults": NameList(), "server_time_ns": Int(),
              "last_target_seq": Int(0, U64_MAX, optional=True), "rejects": Counts(), "detail": Str()}
    reply_to_seq: int | None
    ok: bool
    mode: str
    estop: bool
    server_time_ns: int
    faults: list[str] = field(default_factory=list)
    last_target_seq: int | None = None
    rejects: dict[str, int] = field(default_factory=dict)  # server's reject counts by reason
    detail: str = ""


@dataclass
class Describe(Message):
    """Client -> server request (control channel); reply Description. Needs nothing but the robot id, which every
    state frame's header carries."""

    TYPE = "describe"
    MAX_BYTES = 512
    SCHEMA: ClassVar[dict[str, Any]] = {}


@dataclass
class Description(Message):
    """Server -> client: what the arm accepts, so a client needs no out-of-band configuration. Limits are the ones
    the servo enforces (hardware range minus its margin, its velocity/acceleration scales), not the datasheet."""

    TYPE = "description"
    MAX_BYTES = 8 * KIB
    SCHEMA = {"reply_to_seq": Int(0, U64_MAX), "arm": Str(), "joint_names": NameList(),
              "joint_min": Arr(("Dq",)), "joint_max": Arr(("Dq",)), "joint_vel_max": Arr(("Dq",)),
              "joint_acc_max": Arr(("Dq",)), "workspace_lo": Arr((3,), optional=True),
              "workspace_hi": Arr((3,), optional=True), "gripper_range": Arr((2,), optional=True),
              "servo_period_ns": Int(1), "state_period_ns": Int(1), "heartbeat_timeout_ns": Int(1),
              "require_heartbeat": Bool(), "simulated": Bool(), "modes": NameList(), "mode": Str(NAME_RE),
              "targets": NameList(), "reject_reasons": NameList()}
    reply_to_seq: int
    arm: str
    joint_names: list[str]
    joint_min: np.ndarray  # (Dq,) rad
    joint_max: np.ndarray
    joint_vel_max: np.ndarray  # (Dq,) rad/s
    joint_acc_max: np.ndarray  # (Dq,) rad/s^2
    servo_period_ns: int
    state_period_ns: int
    heartbeat_timeout_ns: int
    require_heartbeat: bool
    simulated: bool
    modes: list[str]
    mode: str
    targets: list[str]  # target message types the server takes
    reject_reasons: list[str]  # every reason that can show up in Status.rejects
    workspace_lo: np.ndarray | None = None  # (3,) m, TCP box in the base frame
    workspace_hi: np.ndarray | None = None
    gripper_range: np.ndarray | None = None  # (2,) m, finger opening (min, max)

    def _check(self, header: Header) -> None:
        if (self.workspace_lo is None) != (self.workspace_hi is None):
            raise ProtocolError(MISSING_FIELD, "description: workspace_lo and workspace_hi go together")


MESSAGE_TYPES: dict[str, type[Message]] = {c.TYPE: c for c in (
    RobotState, JointTarget, CartesianTarget, Heartbeat, EStop, Reset, ModeRequest, ModeReply, Status, Describe,
    Description)}


# --- encode / decode --------------------------------------------------------------------------------------
_ABSENT = object()
_CODEC_CACHE: dict[type, tuple] = {}


def _codecs(cls: type[Message]) -> tuple[tuple[str, bool, Any, Any], ...]:
    codecs = _CODEC_CACHE.get(cls)
    if codecs is None:
        codecs = _CODEC_CACHE[cls] = _field_codecs(cls)
    return codecs


def _check_header(robot_id: Any, seq: Any, t: Any) -> None:
    if not isinstance(robot_id, str) or not ROBOT_ID_RE.fullmatch(robot_id):
        raise ProtocolError(BAD_HEADER, f"robot_id {str(robot_id)[:40]!r} does not match {ROBOT_ID_RE.pattern}")
    if type(seq) is not int or not 0 <= seq <= U64_MAX:
        raise ProtocolError(BAD_HEADER, f"seq {seq!r} is not an int in 0..2**64-1")
    if type(t) is not int or not 0 <= t <= I64_MAX:
        raise ProtocolError(BAD_HEADER, f"send_time_ns {t!r} is not an int in 0..2**63-1")


def encode(header: Header, msg: Message) -> bytes:
    """Validate ``msg`` (same rules as decode) and return one frame. Raises ProtocolError."""
    _check_header(header.robot_id, header.seq, header.send_time_ns)
    body, dims = {}, {}
    for name, optional, _, encode_field in _codecs(type(msg)):
        v = getattr(msg, name)
        if v is None:
            if not optional:
                raise ProtocolError(MISSING_FIELD, f"{msg.TYPE}.{name} is required")
            continue  # absent optional fields are omitted on the wire
        body[name] = encode_field(v, dims)
    msg._check(Header(header.robot_id, header.seq, header.send_time_ns, type=msg.TYPE))
    data = msgpack.packb([PROTOCOL_VERSION, msg.TYPE, header.robot_id, header.seq, header.send_time_ns, body],
                         use_bin_type=True)
    if len(data) > msg.MAX_BYTES:
        raise ProtocolError(TOO_LARGE, f"{msg.TYPE}: {len(data)} bytes > {msg.MAX_BYTES}")
    return data


def decode(data: bytes | bytearray | memoryview, robot_id: str | None = None) -> tuple[Header, Message]:
    """Parse and validate one frame. ``robot_id``: reject frames for another robot. Raises ProtocolError only."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(BAD_TYPE, f"frame is {type(data).__name__}, expected bytes")
    n = memoryview(data).nbytes
    if n > MAX_FRAME_BYTES:
        raise ProtocolError(TOO_LARGE, f"{n} bytes > {MAX_FRAME_BYTES}")
    try:
        top = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, **_UNPACK_LIMITS)
    except (ValueError, TypeError, msgpack.UnpackException) as e:  # ExtraData, FormatError, StackError, limits, utf-8
        raise ProtocolError(MALFORMED, f"{type(e).__name__}: {str(e)[:80]}") from None
    if not isinstance(top, list) or len(top) != 6:
        raise ProtocolError(BAD_ENVELOPE, "expected [version, type, robot_id, seq, send_time_ns, body]")
    version, mtype, rid, seq, t, body = top
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise ProtocolError(VERSION, f"version {version!r}, this side speaks {PROTOCOL_VERSION}")
    cls = MESSAGE_TYPES.get(mtype) if isinstance(mtype, str) else None
    if cls is None:
        raise ProtocolError(UNKNOWN_TYPE, f"type {str(mtype)[:40]!r} not in {sorted(MESSAGE_TYPES)}")
    if n > cls.MAX_BYTES:
        raise ProtocolError(TOO_LARGE, f"{mtype}: {n} bytes > {cls.MAX_BYTES}")
    _check_header(rid, seq, t)
    if robot_id is not None and rid != robot_id:
        raise ProtocolError(WRONG_ROBOT, f"robot_id {rid!r}, expected {robot_id!r}")
    if not isinstance(body, dict):
        raise ProtocolError(BAD_ENVELOPE, f"body is {type(body).__name__}, expected a map")
    if not body.keys() <= cls.SCHEMA.keys():
        unknown = set(body) - set(cls.SCHEMA)
        raise ProtocolError(UNKNOWN_FIELD, f"{mtype}: unknown fields {sorted(map(repr, unknown))[:5]}")
    values, dims = {}, {}
    for name, optional, decode_field, _ in _codecs(cls):
        v = body.get(name, _ABSENT)
        if v is _ABSENT:
            if not optional:
                raise ProtocolError(MISSING_FIELD, f"{mtype}.{name} is required")
            values[name] = None
            continue
        values[name] = decode_field(v, dims)
    header = Header(rid, seq, t, version, mtype)
    msg = cls(**values)
    msg._check(header)
    return header, msg


def message_fields(cls: type[Message]) -> list[str]:
    """Field names of a message class in declaration order (for docs and tests)."""
    return [f.name for f in dataclasses.fields(cls)]
