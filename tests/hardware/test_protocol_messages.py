"""Wire messages: round trip of every type, encode-side validation, and a 10,000-frame fuzz of decode."""

import collections
import math
import random

import msgpack
import numpy as np
import pytest

from hardware.protocol import messages as m

T0 = 1_000_000_000_000  # a send time well away from 0 so time windows can go both ways


def _f32(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def full_messages() -> list[m.Message]:
    """One instance of every type with every optional field set, plus a minimal one where fields are optional."""
    q = np.array([0.5, 0.5, 0.5, 0.5], np.float32)
    cams = {"wrist": m.CameraFrame(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8), T0 - 5),
            "depth": m.CameraFrame(np.arange(12, dtype=np.uint16).reshape(3, 4), T0 - 7)}
    return [
        m.RobotState(_f32(7), _f32(7, seed=1), T0 - 1, mode="joint_position", estop=False, joint_effort=_f32(7, seed=2),
                     gripper=np.array([0.04], np.float32), eef_pos=_f32(3), eef_quat=q, object_state=_f32(14),
                     goal=_f32(3), cameras=cams, last_target_seq=41, last_target_sent_ns=T0 - 900,
                     last_target_applied_ns=T0 - 100),
        m.RobotState(np.zeros(6, np.float64), np.zeros(6, np.float64), T0),
        m.JointTarget(_f32(7).astype(np.float64), T0 + 50_000_000, T0 + 100_000_000, velocities=_f32(7),
                      gripper=np.array([0.0], np.float32)),
        m.JointTarget(_f32(7), T0, T0 + 1),
        m.CartesianTarget(_f32(3), q, T0, T0 + 100_000_000, gripper=np.array([0.02], np.float32)),
        m.Heartbeat("policy"),
        m.EStop(True, "operator pressed the UI stop"),
        m.EStop(False),
        m.Reset(True, True, home_joint_pos=_f32(7)),
        m.Reset(False, False),
        m.ModeRequest("cartesian_impedance"),
        m.ModeReply(7, False, "idle", "mode not supported by this arm"),
        m.Status(3, True, "idle", False, T0, faults=["joint_limit", "comm_timeout"], last_target_seq=9,
                 rejects={"not_finite": 2, "too_large": 1}, detail="ok"),
        m.Status(None, False, "hold", True, T0),
        m.Describe(),
        m.Description(4, "pybullet_panda", [f"joint{i}" for i in range(7)], -_f32(7), _f32(7) + 1, _f32(7) + 2,
                      _f32(7) + 3, 1_000_000, 5_000_000, 500_000_000, True, True, ["servo", "hold", "stop"], "hold",
                      ["joint_target"], ["stale", "future"], workspace_lo=np.zeros(3), workspace_hi=np.ones(3),
                      gripper_range=np.array([0.0, 0.08])),
    ]


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, m.CameraFrame):
        return _same(a.image, b.image) and a.capture_time_ns == b.capture_time_ns
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("msg", full_messages(), ids=lambda x: type(x).__name__)
def test_round_trip_every_type(msg):
    data = msg.to_bytes("panda-1", 2**64 - 1, T0)
    header, back = m.decode(data, robot_id="panda-1")
    assert header == m.Header("panda-1", 2**64 - 1, T0, m.PROTOCOL_VERSION, msg.TYPE)
    assert type(back) is type(msg)
    for name in m.message_fields(type(msg)):
        assert _same(getattr(msg, name), getattr(back, name)), name
    assert type(msg).from_bytes(data)[1].TYPE == msg.TYPE
    assert set(m.MESSAGE_TYPES) == {type(x).TYPE for x in full_messages()}


def test_from_bytes_checks_the_type_and_robot():
    data = m.Heartbeat().to_bytes("a", 1, T0)
    with pytest.raises(m.ProtocolError) as e:
        m.JointTarget.from_bytes(data)
    assert e.value.reason == m.WRONG_CHANNEL
    with pytest.raises(m.ProtocolError) as e:
        m.decode(data, robot_id="b")
    assert e.value.reason == m.WRONG_ROBOT


@pytest.mark.parametrize("msg, reason", [
    (m.JointTarget(np.array([0.0, np.nan]), T0, T0 + 1), m.NOT_FINITE),
    (m.JointTarget(np.zeros(2, np.int32), T0, T0 + 1), m.BAD_DTYPE),
    (m.JointTarget(np.zeros((2, 2)), T0, T0 + 1), m.BAD_SHAPE),
    (m.JointTarget(np.zeros(2), T0, T0 + 1, velocities=np.zeros(3)), m.BAD_SHAPE),  # Dq must agree
    (m.JointTarget(np.zeros(33), T0, T0 + 1), m.BAD_SHAPE),
    (m.JointTarget(np.zeros(2), T0, T0), m.OUT_OF_RANGE),  # already expired when sent
    (m.JointTarget(np.zeros(2), T0, T0 + m.MAX_VALIDITY_NS + 1), m.OUT_OF_RANGE),
    (m.CartesianTarget(np.zeros(3), np.array([1.0, 1, 0, 0]), T0, T0 + 1), m.OUT_OF_RANGE),  # not unit
    (m.RobotState(np.zeros(7), np.zeros(7), T0, eef_pos=np.zeros(3)), m.MISSING_FIELD),
    (m.RobotState(np.zeros(7), np.zeros(7), T0, mode="Bad Mode"), m.OUT_OF_RANGE),
    (m.RobotState(np.zeros(7), np.zeros(7), T0, cameras={"w": m.CameraFrame(np.zeros((4, 4, 4), np.uint8), 0)}),
     m.BAD_SHAPE),
    (m.RobotState(np.zeros(7), np.zeros(7), T0,
                  cameras={"big": m.CameraFrame(np.zeros((4096, 4096, 3), np.uint8), 0)}), m.TOO_LARGE),
    (m.EStop(True, "x" * 300), m.OUT_OF_RANGE),
    (m.Status(1, 1, "idle", False, T0), m.BAD_TYPE),  # int where bool is required
    (m.ModeReply(-1, True, "idle"), m.OUT_OF_RANGE),
])
def test_encode_refuses_what_decode_would(msg, reason):
    with pytest.raises(m.ProtocolError) as e:
        msg.to_bytes("panda", 1, T0)
    assert e.value.reason == reason, e.value


# --- fuzz -------------------------------------------------------------------------------------------------
def _raw(msg, seq=1):
    return msgpack.unpackb(msg.to_bytes("panda", seq, T0), raw=False)


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _targeted(rng: random.Random, valid: list[m.Message]):
    """(frame, expected reason) for one deliberate defect."""
    kind = rng.choice(["version", "dtype", "shape", "nan", "types", "oversized", "unknown_field", "missing_field",
                       "unknown_type", "envelope", "header", "array_len", "strkey"])
    jt = _raw(m.JointTarget(np.zeros(7), T0, T0 + 10_000_000, velocities=np.zeros(7)))
    body = jt[5]
    if kind == "version":
        jt[0] = rng.choice([0, 1, 3, 255, -1, "2", 2.0, True])
        return _pack(jt), m.VERSION
    if kind == "dtype":
        body["positions"]["dtype"] = rng.choice(["object", "float16", "<f8", "complex64", "O", "", "U8"])
        return _pack(jt), m.BAD_DTYPE
    if kind == "shape":
        body["positions"]["shape"] = rng.choice([[8], [7, 1], [-7], ["7"], 7, [2**40], [1] * 9])
        return _pack(jt), (m.BAD_SHAPE, m.BAD_ARRAY)  # a bad shape list, or a shape that disagrees with the data
    if kind == "nan":
        bad = rng.choice([np.nan, np.inf, -np.inf])
        arr = np.zeros(7)
        arr[rng.randrange(7)] = bad
        body[rng.choice(["positions", "velocities"])] = m.encode_array(arr)
        return _pack(jt), m.NOT_FINITE
    if kind == "types":
        field, value = rng.choice([("target_time_ns", 1.5), ("target_time_ns", "now"), ("expires_ns", True),
                                   ("positions", [0.0] * 7), ("positions", b"\0" * 56), ("velocities", None)])
        body[field] = value
        return _pack(jt), m.BAD_TYPE
    if kind == "oversized":
        body["positions"] = m.encode_array(np.zeros(32))
        body["velocities"] = m.encode_array(np.zeros(32))
        body["pad"] = "x" * 4000
        return _pack(jt), m.TOO_LARGE
    if kind == "unknown_field":
        body[rng.choice(["torque", "kp", "__class__"])] = 1
        return _pack(jt), m.UNKNOWN_FIELD
    if kind == "missing_field":
        del body[rng.choice(["positions", "target_time_ns", "expires_ns"])]
        return _pack(jt), m.MISSING_FIELD
    if kind == "unknown_type":
        jt[1] = rng.choice(["torque_target", "", "STATE", 3])
        return _pack(jt), m.UNKNOWN_TYPE
    if kind == "envelope":
        return _pack(rng.choice([jt[:5], jt + [0], {"type": "state"}, "x", 3, None, [m.PROTOCOL_VERSION, "heartbeat", "a", 1, 1, []]])), \
            m.BAD_ENVELOPE
    if kind == "header":
        i, v = rng.choice([(2, ""), (2, "a" * 65), (2, "robot id"), (2, 7), (3, -1), (3, -(2**63)), (3, 1.0),
                           (4, -5), (4, 2**63), (4, None)])
        jt[i] = v
        return _pack(jt), m.BAD_HEADER
    if kind == "array_len":
        body["positions"]["data"] = body["positions"]["data"][: rng.randrange(56)]
        return _pack(jt), m.BAD_ARRAY
    # map keys of other types: ints are malformed (strict_map_key); bytes keys are unknown fields
    key, where = rng.choice([(1, body), (2.5, body), (b"positions", body), (b"data", body["positions"]),
                             (3, body["positions"])])
    where[key] = 1
    if isinstance(key, bytes):
        return _pack(jt), m.UNKNOWN_FIELD if where is body else m.BAD_ARRAY
    return _pack(jt), m.MALFORMED


def test_fuzz_10000_frames_only_protocol_errors():
    rng = random.Random(1234)
    valid = full_messages()
    frames = [v.to_bytes("panda", 5, T0) for v in valid]
    counts: collections.Counter[str] = collections.Counter()
    by_category: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    mismatches = []
    for i in range(10_000):
        cat = ("random", "truncated", "bitflip", "targeted")[i % 4]
        expected = None
        if cat == "random":
            data = rng.randbytes(rng.randrange(0, 300))
            if rng.random() < 0.3:  # start like a msgpack array of 6 to get past the first byte
                data = b"\x96" + data
        elif cat == "truncated":
            f = rng.choice(frames)
            data = f[: rng.randrange(len(f))]
        elif cat == "bitflip":
            data = bytearray(rng.choice(frames))
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            data = bytes(data)
        else:
            data, expected = _targeted(rng, valid)
        try:
            m.decode(data)
            reason = "ok"
        except m.ProtocolError as e:  # anything else propagates and fails the test
            reason = e.reason
            assert reason in m.REASONS
        counts[reason] += 1
        by_category[cat][reason] += 1
        if expected is not None and reason not in (expected if isinstance(expected, tuple) else (expected,)):
            mismatches.append((expected, reason))
        if cat == "truncated":
            assert reason != "ok"
    assert sum(counts.values()) == 10_000
    assert not mismatches, collections.Counter(mismatches).most_common(5)
    assert by_category["targeted"]["ok"] == 0
    assert by_category["random"]["ok"] == 0
    # every targeted defect kind shows up under its own reason
    for reason in (m.VERSION, m.BAD_DTYPE, m.NOT_FINITE, m.BAD_TYPE, m.TOO_LARGE, m.UNKNOWN_FIELD,
                   m.MISSING_FIELD, m.UNKNOWN_TYPE, m.BAD_ENVELOPE, m.BAD_HEADER, m.BAD_ARRAY, m.MALFORMED):
        assert by_category["targeted"][reason] > 0, reason
    print("\nfuzz rejects by reason:", dict(counts.most_common()))


def test_decode_never_pickles_or_execs():
    # a pickle payload is just malformed msgpack (or a wrong envelope): it is never unpickled
    import pickle
    for obj in (np.zeros(3), {"a": 1}, m.Heartbeat()):
        with pytest.raises(m.ProtocolError):
            m.decode(pickle.dumps(obj))


def test_read_only_views_and_bool_arrays():
    header, st = m.decode(full_messages()[0].to_bytes("p", 1, T0))
    assert not st.joint_pos.flags.writeable  # views on the frame; copy before writing
    arr = m.decode_array({"dtype": "bool", "shape": [2], "data": b"\x00\x01"}, "x")
    assert arr.tolist() == [False, True]
    with pytest.raises(m.ProtocolError) as e:
        m.decode_array({"dtype": "bool", "shape": [2], "data": b"\x00\x02"}, "x")
    assert e.value.reason == m.OUT_OF_RANGE
    assert math.prod([]) == 1  # a 0-d array carries one element
    wire = msgpack.unpackb(_pack(m.encode_array(np.float64(2.5))), raw=False)
    assert m.decode_array(wire, "x").item() == 2.5


# --- the per-field fast path (state and target vectors) hands every unusual value to the full checks ----------
def _state_body(**fields) -> bytes:
    raw = _raw(m.RobotState(np.zeros(7), np.zeros(7), T0, joint_effort=np.zeros(7)))
    raw[5].update(fields)
    return _pack(raw)


@pytest.mark.parametrize("fields, reason", [
    ({"joint_vel": m.encode_array(np.zeros(6))}, m.BAD_SHAPE),  # Dq disagrees with joint_pos
    ({"joint_pos": m.encode_array(np.zeros(33)), "joint_vel": m.encode_array(np.zeros(33)),
      "joint_effort": m.encode_array(np.zeros(33))}, m.BAD_SHAPE),  # Dq above MAX_DOF
    ({"joint_pos": m.encode_array(np.zeros(0)), "joint_vel": m.encode_array(np.zeros(0)),
      "joint_effort": m.encode_array(np.zeros(0))}, m.BAD_SHAPE),  # Dq = 0
    ({"gripper": m.encode_array(np.zeros(2))}, m.BAD_SHAPE),  # a fixed length
    ({"joint_pos": m.encode_array(np.zeros(7, np.int64))}, m.BAD_DTYPE),  # ints where floats are required
    ({"joint_pos": m.encode_array(np.zeros((7, 1)))}, m.BAD_SHAPE),
    ({"joint_effort": m.encode_array(np.array([0, 0, 0, 0, 0, 0, np.inf], np.float32))}, m.NOT_FINITE),
    ({"object_state": m.encode_array(np.full(100, np.nan))}, m.NOT_FINITE),  # longer than the fast path takes
    ({"eef_pos": m.encode_array(np.zeros(3)), "eef_quat": m.encode_array(np.array([1.0, 0, 0, 0.1]))},
     m.OUT_OF_RANGE),  # quaternion norm
    ({"state_time_ns": -1}, m.OUT_OF_RANGE),
    ({"state_time_ns": True}, m.BAD_TYPE),
    ({"last_target_seq": 1, "last_target_sent_ns": 1, "last_target_applied_ns": 2**63}, m.OUT_OF_RANGE),
])
def test_state_fields_refused_with_their_reason(fields, reason):
    with pytest.raises(m.ProtocolError) as e:
        m.decode(_state_body(**fields))
    assert e.value.reason == reason, e.value


def test_state_fields_the_fast_path_does_not_take_still_decode():
    body = _state_body(object_state=m.encode_array(np.arange(100, dtype=np.float32)),  # > 64 values
                       joint_pos=m.encode_array(np.arange(7, dtype=np.float32)))  # float32 beside float64
    _, st = m.decode(body)
    assert st.object_state.tolist() == list(range(100)) and st.joint_pos.dtype == np.float32


@pytest.mark.parametrize("positions", [
    np.arange(7.0).astype(">f8"),  # big-endian: sent little-endian
    (np.arange(14.0) / 2).reshape(7, 2)[:, 0],  # not contiguous (a column)
    list(np.arange(7.0)),  # not an ndarray
])
def test_encode_normalises_arrays_the_fast_path_does_not_take(positions):
    frame = m.JointTarget(positions, T0, T0 + 1).to_bytes("panda", 1, T0)
    _, tgt = m.decode(frame)
    assert tgt.positions.tolist() == list(range(7)) and tgt.positions.dtype == np.dtype("<f8")
