"""Teleop devices: a person drives the end effector. Each device returns a `TeleopCommand` per poll."""

from hardware.teleop.base import TeleopCommand, TeleopDevice, make_device

__all__ = ["TeleopCommand", "TeleopDevice", "make_device"]
