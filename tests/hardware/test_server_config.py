"""ArmServerConfig goes through the one strict reader (robotstack/core/config.py), like ServoConfig."""

from __future__ import annotations

import pytest

from hardware.drivers import make_driver
from hardware.protocol.transport import Endpoints
from hardware.server import ArmServer, ArmServerConfig
from robotstack.core.errors import ConfigError


def test_arm_server_config_is_read_strictly():
    cfg = ArmServerConfig.from_dict({"robot_id": "left-arm", "state_rate_hz": 100, "realtime": False})
    assert cfg == ArmServerConfig(robot_id="left-arm", state_rate_hz=100.0, realtime=False)
    assert ArmServerConfig.from_dict(None) == ArmServerConfig()
    cases = [
        ({"state_rate": 100}, r"arm server config: unknown key 'state_rate'; allowed keys .*state_rate_hz"),
        ({"max_requests_per_tick": 2.5}, r"arm server config: key 'max_requests_per_tick' = 2\.5: expected int"),
        ({"realtime": "yes"}, r"key 'realtime' = 'yes': expected bool"),
        ({"state_rate_hz": 0}, r"arm server config: state_rate_hz=0\.0: expected > 0"),
        ({"max_requests_per_tick": 0}, r"max_requests_per_tick=0: expected >= 1"),
        ({"future_tol_remote_s": -0.001}, r"future_tol_remote_s=-0\.001: expected >= 0"),
        ({"robot_id": "arm one"}, r"robot_id='arm one': expected a protocol robot id"),
    ]
    for data, match in cases:
        with pytest.raises(ConfigError, match=match):
            ArmServerConfig.from_dict(data)
    with pytest.raises(ConfigError, match="state_rate_hz"):  # direct construction is checked too
        ArmServerConfig(state_rate_hz=-1.0)


def test_arm_server_takes_a_config_dict(tmp_path):
    driver = make_driver("pybullet")
    server = ArmServer(driver, Endpoints.ipc(str(tmp_path)), config={"robot_id": "twin", "state_rate_hz": 100})
    try:
        assert server.cfg.robot_id == "twin" and server.transport.robot_id == "twin"
        assert server.state_every == round(server.core.config.rate_hz / 100)
    finally:
        server.close()
    with pytest.raises(ConfigError, match="unknown key 'rate'"):
        ArmServer(driver, Endpoints.ipc(str(tmp_path / "b")), config={"rate": 5})


def test_serve_arm_servo_limits_are_checked_by_name_before_anything_starts():
    """`serve-arm --servo JSON` takes ServoConfig keys (e.g. the rated limits for a sim arm); a bad one is refused
    with the key named, before a driver or socket exists."""
    import subprocess
    import sys

    base = [sys.executable, "-m", "robotstack.cli", "serve-arm", "--driver", "pybullet", "--task", "reach",
            "--describe"]
    for bad, said in (('{"accel_scal": 1}', "unknown key 'accel_scal'"), ('{"accel_scale": 3}', "accel_scale=3.0"),
                      ("[1]", "not a JSON object"), ("{oops", "Expecting property name")):
        r = subprocess.run(base + ["--servo", bad], capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and said in r.stderr and "--servo" in r.stderr, (bad, r.stderr[-300:])
    ok = subprocess.run(base + ["--servo", '{"accel_scale": 1.0, "velocity_scale": 1.0}'], capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-300:]
