"""Measurement: the tuner's step schedule, step times, and window statistics.

Step time.  A step's time is the interval between the starts of consecutive
synchronised steps on a rank (:class:`StepTimer`); across ranks it is the maximum
(the step is done when the slowest rank is).  A window of ``n`` steps is
summarised by its median ``m`` and its median absolute deviation ``MAD``; the
standard error of the median is estimated as
``se = 1.2533 * 1.4826 * MAD / sqrt(n)`` (normal-theory constants: 1.4826 turns a
MAD into a standard deviation, 1.2533 = sqrt(pi/2) is the median's efficiency loss).

Schedule.  Steps ``0 .. warmup-1`` are untouched (DDP rebuilds buckets at step 1);
then ``baseline`` steps measure the user's configuration; then ``profile`` steps of
each kind; then each candidate takes 1 transition step (DDP's first step with a new
reducer uses its initial bucketing, in definition order) and ``measure`` measured
steps.  The first measured step also pays DDP's one-off bucket rebuild (a few
allocations); the window's median is not moved by one such step.

Budget.  A step's time is known only when the next step starts, so the decision is
taken at the start of the step after the last measured one: tuning uses the steps
``0 .. decision_step``, which is ``total = decision_step + 1`` steps, and a script
that runs ``total`` steps is tuned and saved.  :func:`plan_schedule` fits as many
candidates as the budget allows: ``warmup + baseline + 2 profile + k (1 + measure)
+ 1 <= max_steps``.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

from gdat.collectives import gather_from_all

__all__ = ["WindowStats", "window_stats", "gather_window", "StepTimer", "Schedule", "plan_schedule",
           "TRANSITION_STEPS"]

TRANSITION_STEPS = 1


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


@dataclass(frozen=True)
class Schedule:
    """Step indices of each phase (``[start, end)`` ranges)."""

    warmup: int
    baseline: int
    profile: int
    measure: int
    candidates: int

    @property
    def baseline_steps(self) -> range:
        return range(self.warmup, self.warmup + self.baseline)

    @property
    def compute_steps(self) -> range:
        start = self.warmup + self.baseline
        return range(start, start + self.profile)

    @property
    def overlap_steps(self) -> range:
        start = self.compute_steps.stop
        return range(start, start + self.profile)

    def candidate_switch(self, i: int) -> int:
        """The step at whose start candidate ``i`` is switched in."""
        return self.overlap_steps.stop + i * (TRANSITION_STEPS + self.measure)

    def candidate_steps(self, i: int) -> range:
        start = self.candidate_switch(i) + TRANSITION_STEPS
        return range(start, start + self.measure)

    def candidate_ending_at(self, step: int) -> int | None:
        """The candidate whose measured window ends when ``step`` starts, if any."""
        k, rest = divmod(step - self.overlap_steps.stop, TRANSITION_STEPS + self.measure)
        return k - 1 if rest == 0 and 1 <= k <= self.candidates else None

    @property
    def total(self) -> int:
        """Steps tuning uses, the decision step (the start of the step after the
        last measured one, where the winner is switched in) included."""
        return self.candidate_switch(self.candidates) + 1


def plan_schedule(max_steps: int, top_k: int, warmup: int = 2, baseline: int = 4,
                  profile: int = 3, measure: int = 5) -> Schedule:
    """The largest schedule with at most ``top_k`` candidates within ``max_steps``
    steps; ``candidates`` is 0 when not even one fits."""
    fixed = warmup + baseline + 2 * profile + 1
    per = TRANSITION_STEPS + measure
    k = max(0, min(top_k, (max_steps - fixed) // per))
    return Schedule(warmup, baseline, profile, measure, k)
