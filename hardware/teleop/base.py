"""Common teleop command and device factory.

A device maps a person's input to the env action convention of docs/CONTRACTS.md:
`[dx, dy, dz, (dyaw,) gripper]` in [-1, 1], plus episode events (start/save, discard, quit) and whether the
person is engaged (deadman held / keys active) — the controller uses `engaged` for human takeover.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from robotstack.core.errors import DeviceUnavailableError

EVENTS = ("start_or_save", "discard", "quit")


@dataclass
class TeleopCommand:
    motion: np.ndarray  # (4,) float32 [dx, dy, dz, dyaw] in [-1, 1]
    gripper_closed: bool
    engaged: bool  # the person is actively driving (takeover flag)
    events: set[str] = field(default_factory=set)

    def action(self, action_dim: int) -> np.ndarray:
        """Action in the env convention: yaw only when the task has it (action_dim 5)."""
        grip = 1.0 if self.gripper_closed else -1.0
        motion = self.motion if action_dim == 5 else self.motion[:3]
        return np.concatenate([motion, [grip]]).astype(np.float32)


class TeleopDevice(Protocol):
    def poll(self) -> TeleopCommand: ...

    def close(self) -> None: ...


def make_device(name: str, **kwargs) -> TeleopDevice:
    if name == "keyboard":
        from hardware.teleop.keyboard import KeyboardDevice

        return KeyboardDevice(**kwargs)
    if name == "spacemouse":
        from hardware.teleop.spacemouse import SpaceMouseDevice

        return SpaceMouseDevice(**kwargs)
    raise DeviceUnavailableError(f"unknown teleop device {name!r}; expected one of: keyboard, spacemouse")
