"""A text progress bar on stderr for long tuning runs.

On a terminal the bar redraws one line (``\\r``); otherwise (a log file, a pipe)
each step prints one line, so logs stay readable.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """``total`` steps; :meth:`step` advances by one with a short label."""

    def __init__(self, total: int, title: str, stream: TextIO | None = None, width: int = 24) -> None:
        self.total = max(total, 1)
        self.title = title
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        self.t0 = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def set_total(self, total: int) -> None:
        """Set the number of steps once it is known."""
        self.total = max(total, 1)

    def step(self, label: str) -> None:
        self.done = min(self.done + 1, self.total)
        filled = self.width * self.done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        line = (f"{self.title} [{bar}] {self.done}/{self.total} "
                f"{time.perf_counter() - self.t0:6.1f}s {label}")
        if self.tty:
            self.stream.write("\r\x1b[K" + line[:160])
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
