"""E-stop from an interactive terminal: a daemon thread reads stdin in cbreak mode; space, 'e' or Esc -> callback.

Only for a tty on stdin and when no keyboard teleop device owns stdin (with keyboard takeover, its quit key Q /
Ctrl-D and Ctrl-C are the stop keys). Ctrl-C is handled by the controller (EStop, then exit) in every case.
"""

from __future__ import annotations

import os
import select
import sys
import threading
from typing import Callable

ESTOP_KEYS = {" ": "space", "e": "e", "\x1b": "Esc"}


class TerminalEStop:
    def __init__(self, on_estop: Callable[[str], None], stream=None):
        self.stream = stream if stream is not None else sys.stdin
        self.on_estop = on_estop
        self._stop = threading.Event()
        self._saved = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def available(stream=None) -> bool:
        s = stream if stream is not None else sys.stdin
        try:
            return os.isatty(s.fileno())
        except (AttributeError, OSError, ValueError):
            return False

    def start(self) -> "TerminalEStop":
        import termios
        import tty

        fd = self.stream.fileno()
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)  # keys one by one; Ctrl-C still raises KeyboardInterrupt in the main thread
        self._thread = threading.Thread(target=self._run, args=(fd,), name="estop-keys", daemon=True)
        self._thread.start()
        return self

    def _run(self, fd: int) -> None:
        while not self._stop.is_set():
            if select.select([fd], [], [], 0.05)[0]:
                data = os.read(fd, 64).decode(errors="ignore")
                for ch in data:
                    if ch in ESTOP_KEYS:
                        self.on_estop(f"operator pressed {ESTOP_KEYS[ch]}")
                        return

    def close(self) -> None:
        import termios

        self._stop.set()
        if self._thread is not None:
            self._thread.join(0.5)
        if self._saved is not None:
            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved)
