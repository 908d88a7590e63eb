"""Measurement: the tuner's step schedule, step times, and window statistics.

Step time.  A step's time is the interval between the starts of consecutive
synchronised steps on a rank (:class:`StepTimer`); across ranks it is the maximum
(the step is done when the slowest rank is).  A window of ``n`` steps is
summarised by its median ``m`` and its median absolute deviation ``MAD``; the
standard error of the median is estimated as
``se = 1.2533 * 1.4826 * MAD / sqrt(n)`` (normal-theory constants: 1.4826 turns a
MAD into a standard deviation, 1.2533 = sqrt(pi/2) is the median's efficiency loss).

Schedule.  Steps ``0 .. warmup-1`` are untouched (DDP rebuilds buckets at step 1);
then ``profile`` steps of each kind (compute-only, overlapped); then up to
``blocks`` measurement blocks, each 1 transition step (DDP's first step with a new
reducer uses its initial bucketing, in definition order) and ``measure`` measured
steps of one plan: the user's configuration or a candidate, in the interleaved
order of :mod:`gdat.decide`.  The first measured step also pays DDP's one-off
bucket rebuild (a few allocations), the same in every block.  Blocks end at fixed
step indices; at each end rank 0 says which plan the next block measures, or that
measuring is over (then the decision is taken at that step).

Budget.  A step's time is known only when the next step starts, so the decision is
taken at the start of the step after the last measured one: tuning uses at most
the steps ``0 .. decision_step``, ``total = decision_step + 1`` steps, and a script
that runs ``total`` steps is tuned and saved.  :func:`plan_schedule` fits as many
blocks as the budget allows: ``warmup + 2 profile + blocks (1 + measure) + 1 <=
max_steps``, and at least 2 (the user's configuration and one candidate).

Confirmation.  After the decision step (a transition step: the decided plan's
first), ``confirm`` steps measure the decided plan in steady state, timestamps
only (:meth:`Schedule.confirm_steps`).  After an adoption one more block of the
user's configuration follows them (:meth:`Schedule.recheck_steps`: 1 transition
step and ``measure`` steps), the baseline measured after the window; the
confirmation is taken at the start of the step after that block, which switches
the adopted plan back in if it holds (:meth:`Schedule.confirmed_at`).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

from gdat.collectives import gather_from_all

__all__ = ["WindowStats", "window_stats", "pooled", "gather_window", "StepTimer", "Schedule", "plan_schedule",
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


@dataclass(frozen=True)
class Schedule:
    """Step indices of each phase (``[start, end)`` ranges)."""

    warmup: int
    profile: int
    measure: int
    blocks: int
    confirm: int

    @property
    def compute_steps(self) -> range:
        return range(self.warmup, self.warmup + self.profile)

    @property
    def overlap_steps(self) -> range:
        start = self.compute_steps.stop
        return range(start, start + self.profile)

    def block_start(self, b: int) -> int:
        """The step at whose start block ``b``'s plan is switched in (its transition step)."""
        return self.overlap_steps.stop + b * (TRANSITION_STEPS + self.measure)

    def block_steps(self, b: int) -> range:
        """Block ``b``'s measured steps."""
        start = self.block_start(b) + TRANSITION_STEPS
        return range(start, start + self.measure)

    def block_ending_at(self, step: int) -> int | None:
        """The block whose measured window ends when ``step`` starts, if any."""
        k, rest = divmod(step - self.overlap_steps.stop, TRANSITION_STEPS + self.measure)
        return k - 1 if rest == 0 and 1 <= k <= self.blocks else None

    @property
    def total(self) -> int:
        """Steps tuning uses at most, the decision step (the start of the step after
        the last measured one, where the decided plan is switched in) included."""
        return self.block_start(self.blocks) + 1

    def confirm_steps(self, decision_step: int) -> range:
        """The steady-state window after a decision taken at ``decision_step``
        (the confirmation comes at :meth:`confirmed_at`)."""
        return range(decision_step + TRANSITION_STEPS, decision_step + TRANSITION_STEPS + self.confirm)

    def recheck_steps(self, decision_step: int) -> range:
        """The user's configuration's block after an adopted plan's steady-state
        window; it is switched in at the start of ``confirm_steps(d).stop``."""
        start = self.confirm_steps(decision_step).stop + TRANSITION_STEPS
        return range(start, start + self.measure)

    def steady_weight(self, block: int, decision_step: int) -> float:
        """Where the steady-state window lies between block ``block``'s measured steps
        and the recheck block, by their middle steps (0: at the block, 1: at the recheck)."""
        def mid(r: range) -> float:
            return (r.start + r.stop - 1) / 2

        before, after = mid(self.block_steps(block)), mid(self.recheck_steps(decision_step))
        return (mid(self.confirm_steps(decision_step)) - before) / (after - before)

    def confirmed_at(self, decision_step: int, adopted: bool) -> int:
        """The step at whose start the confirmation is taken."""
        return (self.recheck_steps if adopted else self.confirm_steps)(decision_step).stop


def plan_schedule(max_steps: int, warmup: int = 2, profile: int = 3, measure: int = 3,
                  confirm: int = 6) -> Schedule:
    """The schedule with the most blocks within ``max_steps`` steps; ``blocks`` is
    0 when not even 2 fit (the user's configuration and one candidate)."""
    fixed = warmup + 2 * profile + 1
    blocks = max(0, (max_steps - fixed) // (TRANSITION_STEPS + measure))
    return Schedule(warmup, profile, measure, blocks if blocks >= 2 else 0, confirm)
