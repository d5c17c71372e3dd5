"""Teleop devices driven through a real pseudo-terminal (keyboard) and the missing-device path (spacemouse)."""

import os
import pty
import time

import numpy as np
import pytest

from hardware.teleop import make_device
from robotstack.core.errors import DeviceUnavailableError


@pytest.fixture
def keyboard():
    master, slave = pty.openpty()
    stream = os.fdopen(slave, "rb", buffering=0)
    device = make_device("keyboard", stream=stream, hold_s=0.2)
    yield device, master
    device.close()
    stream.close()
    os.close(master)


def test_keys_map_to_axes_and_gripper(keyboard):
    device, master = keyboard
    os.write(master, b"wa ")
    time.sleep(0.02)
    cmd = device.poll()
    np.testing.assert_allclose(cmd.motion, [1, 1, 0, 0])
    assert cmd.gripper_closed and cmd.engaged
    assert cmd.action(4).tolist() == [1, 1, 0, 1]
    assert cmd.action(5).tolist() == [1, 1, 0, 0, 1]


def test_key_release_is_inferred_after_hold_time(keyboard):
    device, master = keyboard
    os.write(master, b"r")
    time.sleep(0.02)
    assert device.poll().motion[2] == 1.0
    time.sleep(0.3)
    cmd = device.poll()
    assert not cmd.engaged and not cmd.motion.any()


def test_episode_events(keyboard):
    device, master = keyboard
    os.write(master, b"\rxQ")
    time.sleep(0.02)
    assert device.poll().events == {"start_or_save", "discard", "quit"}


def test_keyboard_without_terminal_is_a_clear_error(tmp_path):
    with open(tmp_path / "not_a_tty", "w+b") as f:
        with pytest.raises(DeviceUnavailableError, match="interactive terminal"):
            make_device("keyboard", stream=f)


def test_missing_spacemouse_is_a_clear_error():
    # No SpaceMouse is attached to CI machines (and pyspacemouse is an optional extra).
    with pytest.raises(DeviceUnavailableError, match="(?i)spacemouse"):
        make_device("spacemouse")


def test_unknown_device():
    with pytest.raises(DeviceUnavailableError, match="unknown teleop device"):
        make_device("joystick")
