"""On-robot controller: runs an exported ONNX policy against an arm server over the wire protocol.

    artifact       the only artifact loader: manifest (core/manifest.py) + sha256 + graph I/O checks -> onnxruntime
    policy_runner  loaded artifact -> PolicySpec (what the controller needs) + observation history (To)
    action_map     env actions [dx, dy, dz, (dyaw,) gripper] -> TCP target -> joint target (core.kinematics IK)
    scheduler      timestamped action scheduling: drop actions already in the past, latency compensation
    safety         policy-output checks (NaN/Inf, range), max change per step, stale state
    telemetry      per-step latency (state -> inference -> target sent -> applied), deadline misses, status line
    client         arm connection: state, targets, heartbeats, e-stop, reset, clock offset
    controller     the control loop: episodes, takeover, hot swap, recording
    terminal       e-stop key reader for an interactive terminal

Layering (shared/design.md §3): core, hardware.protocol, numpy, onnxruntime, pyzmq only. Never torch or policies:
tests/runtime/test_no_torch.py runs a deploy in a subprocess and checks sys.modules.
"""
