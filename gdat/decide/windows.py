"""Measurement: step times and the statistics of a window of steps.

Step time.  A step's time is the interval between the starts of consecutive
synchronised steps on a rank (:class:`StepTimer`); across ranks it is the maximum
(the step is done when the slowest rank is).  A window of ``n`` steps is
summarised by its median ``m`` and its median absolute deviation ``MAD``; the
standard error of the median is estimated as
``se = 1.2533 * 1.4826 * MAD / sqrt(n)`` (normal-theory constants: 1.4826 turns a
MAD into a standard deviation, 1.2533 = sqrt(pi/2) is the median's efficiency loss).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

from gdat.core.collectives import gather_from_all

__all__ = ["WindowStats", "window_stats", "pooled", "gather_window", "StepTimer", "noise_sigma_s"]


@dataclass(frozen=True)
class WindowStats:
    """Step times of one window (seconds, max over ranks per step)."""

    step_s: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.step_s)

    @property
    def mad_s(self) -> float:
        m = self.median_s
        return statistics.median(abs(x - m) for x in self.step_s)

    @property
    def se_s(self) -> float:
        return 1.2533 * 1.4826 * self.mad_s / math.sqrt(len(self.step_s))

    def to_dict(self) -> dict[str, float | list[float]]:
        return {"median_ms": self.median_s * 1e3, "mad_ms": self.mad_s * 1e3,
                "steps_ms": [round(x * 1e3, 3) for x in self.step_s]}


def pooled(windows: Sequence[WindowStats]) -> WindowStats:
    """The steps of several windows as one window."""
    return WindowStats(tuple(x for w in windows for x in w.step_s))


def window_stats(per_rank: Sequence[Sequence[float]]) -> WindowStats:
    """Combine each rank's step times of one window: per step, the maximum."""
    if not per_rank or not per_rank[0]:
        raise ValueError("empty window")
    if any(len(steps) != len(per_rank[0]) for steps in per_rank):
        raise ValueError("ranks measured windows of different lengths")
    return WindowStats(tuple(max(vals) for vals in zip(*per_rank)))


class StepTimer:
    """Step times on this rank: :meth:`tick` at the start of each synchronised step
    records the time of the step before it."""

    def __init__(self) -> None:
        self.steps = 0
        self._last: float | None = None
        self.step_s: dict[int, float] = {}

    def tick(self) -> int:
        """Mark the start of a step; returns its index (0, 1, ...)."""
        now = time.perf_counter()
        if self._last is not None:
            self.step_s[self.steps - 1] = now - self._last
        self._last = now
        self.steps += 1
        return self.steps - 1


def gather_window(timer: StepTimer, steps: range, group: Any) -> WindowStats:
    """The window ``steps`` over every rank of ``group`` (a collective)."""
    return window_stats(gather_from_all([timer.step_s[s] for s in steps], group))


def noise_sigma_s(windows: Sequence[WindowStats]) -> float:
    """The step-to-step noise of the machine, seconds: 1.4826 times the median
    absolute deviation of every step from its window's median, pooled over
    ``windows`` (the medians themselves left out)."""
    devs = []
    for w in windows:
        m = w.median_s
        d = sorted(abs(x - m) for x in w.step_s)
        devs.extend(d[1:] if len(w.step_s) % 2 else d)  # an odd window's median step deviates by 0
    return 1.4826 * statistics.median(devs) if devs else 0.0
