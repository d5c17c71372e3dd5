"""Terminal keyboard teleop: raw-mode stdin, no display or X server needed.

A terminal only reports key presses (and the OS auto-repeat while a key is held), never releases, so a
key counts as held for `hold_s` after its last press; auto-repeat (~30 Hz) keeps it alive while held.

Keys: w/s = +x/-x, a/d = +y/-y, r/f = +z/-z, q/e = +yaw/-yaw, space = toggle gripper,
Enter = start episode / save episode, x = discard episode, Q (shift-q) or Ctrl-D = quit.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty

import numpy as np

from hardware.teleop.base import TeleopCommand
from robotstack.core.errors import DeviceUnavailableError

AXIS_KEYS = {
    "w": (0, +1.0), "s": (0, -1.0),
    "a": (1, +1.0), "d": (1, -1.0),
    "r": (2, +1.0), "f": (2, -1.0),
    "q": (3, +1.0), "e": (3, -1.0),
}
HELP = (
    "keys: w/s x, a/d y, r/f z, q/e yaw, space gripper, Enter start/save, x discard, Q quit"
)


class KeyboardDevice:
    def __init__(self, stream=None, hold_s: float = 0.15, speed: float = 1.0):
        self._stream = stream if stream is not None else sys.stdin
        try:
            self._fd = self._stream.fileno()
        except (AttributeError, OSError) as exc:
            raise DeviceUnavailableError("keyboard teleop needs a terminal on stdin") from exc
        if not os.isatty(self._fd):
            raise DeviceUnavailableError(
                "keyboard teleop needs an interactive terminal on stdin (stdin is not a tty); "
                "use --device scripted for unattended recording"
            )
        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)  # keys arrive one by one, Ctrl-C still raises KeyboardInterrupt
        self.hold_s = hold_s
        self.speed = speed
        self._last_press = np.full(4, -np.inf)
        self._direction = np.zeros(4)
        self._gripper_closed = False

    def _read_keys(self) -> str:
        chars = []
        while select.select([self._fd], [], [], 0)[0]:
            data = os.read(self._fd, 64)
            if not data:  # EOF behaves like quit
                chars.append("\x04")
                break
            chars.append(data.decode(errors="ignore"))
        return "".join(chars)

    def poll(self) -> TeleopCommand:
        now = time.monotonic()
        events: set[str] = set()
        for ch in self._read_keys():
            if ch in AXIS_KEYS:
                axis, sign = AXIS_KEYS[ch]
                self._direction[axis] = sign
                self._last_press[axis] = now
            elif ch == " ":
                self._gripper_closed = not self._gripper_closed
            elif ch in ("\r", "\n"):
                events.add("start_or_save")
            elif ch == "x":
                events.add("discard")
            elif ch in ("Q", "\x04"):
                events.add("quit")
        held = (now - self._last_press) < self.hold_s
        motion = np.where(held, self._direction * self.speed, 0.0).astype(np.float32)
        return TeleopCommand(motion=np.clip(motion, -1, 1), gripper_closed=self._gripper_closed,
                             engaged=bool(held.any()), events=events)

    def close(self) -> None:
        termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
