"""3Dconnexion SpaceMouse teleop through pyspacemouse, with a deadman button.

Motion counts only while the deadman button (left button by default) is held; the right button toggles the
gripper. Without the package or the device, a DeviceUnavailableError says which is missing.
"""

from __future__ import annotations

import numpy as np

from hardware.teleop.base import TeleopCommand
from robotstack.core.errors import DeviceUnavailableError


class SpaceMouseDevice:
    def __init__(self, deadman_button: int = 0, gripper_button: int = 1, deadband: float = 0.05,
                 speed: float = 1.0):
        try:
            import pyspacemouse  # optional extra: pip install 'robotstack[spacemouse]'
        except ImportError as exc:
            raise DeviceUnavailableError(
                "spacemouse teleop needs the 'pyspacemouse' package: pip install 'robotstack[spacemouse]'"
            ) from exc
        try:
            opened = pyspacemouse.open()
        except Exception as exc:  # hidapi raises various errors when no device / no permission
            raise DeviceUnavailableError(f"no SpaceMouse could be opened: {exc}") from exc
        if not opened:
            raise DeviceUnavailableError(
                "no SpaceMouse found (is it plugged in, and does this user have access to its hidraw device?)"
            )
        self._pysm = pyspacemouse
        self.deadman_button, self.gripper_button = deadman_button, gripper_button
        self.deadband, self.speed = deadband, speed
        self._gripper_closed = False
        self._prev_grip_pressed = False

    def poll(self) -> TeleopCommand:
        state = self._pysm.read()
        buttons = list(getattr(state, "buttons", []) or [])
        pressed = lambda i: len(buttons) > i and bool(buttons[i])  # noqa: E731
        grip_now = pressed(self.gripper_button)
        if grip_now and not self._prev_grip_pressed:
            self._gripper_closed = not self._gripper_closed
        self._prev_grip_pressed = grip_now
        engaged = pressed(self.deadman_button)
        raw = np.array([state.y, -state.x, state.z, -state.yaw], dtype=np.float32)
        raw[np.abs(raw) < self.deadband] = 0.0
        motion = np.clip(raw * self.speed, -1, 1) if engaged else np.zeros(4, np.float32)
        return TeleopCommand(motion=motion.astype(np.float32), gripper_closed=self._gripper_closed,
                             engaged=engaged)

    def close(self) -> None:
        try:
            self._pysm.close()
        except Exception:
            pass
