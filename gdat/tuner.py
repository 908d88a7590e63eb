"""The tuner's decisions: step windows, statistics, and when a plan is adopted.

Measure.  A step's time is the interval between the starts of consecutive
synchronised steps on a rank; across ranks it is the maximum (the step is done when
the slowest rank is).  A window of ``n`` steps is summarised by its median ``m``
and its median absolute deviation ``MAD``; the standard error of the median is
estimated as ``se = 1.2533 * 1.4826 * MAD / sqrt(n)`` (normal-theory constants:
1.4826 turns a MAD into a standard deviation, 1.2533 = sqrt(pi/2) is the median's
efficiency loss).

Decide.  A candidate is adopted only if its median beats the baseline's by more
than the measured noise: ``m_base - m_cand > max(z * sqrt(se_base^2 + se_cand^2),
floor * m_base)`` with ``z = 2`` and ``floor = 1%``.  Among candidates that pass,
the fastest wins; if none passes, the baseline stays.  The run is called noisy when
the largest such threshold (the baseline against itself included) exceeds 5% of
the baseline median.

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
from dataclasses import dataclass
from typing import Sequence

__all__ = ["WindowStats", "window_stats", "Verdict", "decide", "Schedule", "plan_schedule", "TRANSITION_STEPS"]

TRANSITION_STEPS = 1
Z = 2.0
FLOOR = 0.01
NOISY = 0.05


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
    return WindowStats(tuple(max(vals) for vals in zip(*per_rank)))


@dataclass(frozen=True)
class Verdict:
    """The decision: ``winner`` is an index into the candidates, or ``None`` (keep
    the baseline); ``noise_s`` the threshold the winner had to beat."""

    winner: int | None
    noise_s: float
    gain_s: float
    noisy: bool
    reason: str


def _threshold(base: WindowStats, cand: WindowStats) -> float:
    return max(Z * math.hypot(base.se_s, cand.se_s), FLOOR * base.median_s)


def decide(baseline: WindowStats, candidates: Sequence[WindowStats | None]) -> Verdict:
    """Adopt the fastest candidate that beats the baseline by more than the noise."""
    best: tuple[float, int, float] | None = None
    worst_noise = _threshold(baseline, baseline)
    for i, cand in enumerate(candidates):
        if cand is None:
            continue
        noise = _threshold(baseline, cand)
        worst_noise = max(worst_noise, noise)
        gain = baseline.median_s - cand.median_s
        if gain > noise and (best is None or cand.median_s < best[0]):
            best = (cand.median_s, i, noise)
    noisy = worst_noise > NOISY * baseline.median_s
    if best is None:
        why = "no candidate beat the baseline by more than the measured noise" if candidates else \
            "no candidate plan differed from the baseline"
        return Verdict(None, worst_noise, 0.0, noisy, why + (" (the run was noisy)" if noisy else ""))
    median, i, noise = best
    return Verdict(i, noise, baseline.median_s - median, noisy,
                   f"candidate beat the baseline by {(baseline.median_s - median) * 1e3:.2f} ms "
                   f"(noise threshold {noise * 1e3:.2f} ms)")


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

    @property
    def decision_step(self) -> int:
        """The step at whose start the winner is chosen and switched in."""
        return self.candidate_switch(self.candidates)

    @property
    def total(self) -> int:
        """Steps tuning uses, the decision step included."""
        return self.decision_step + 1


def plan_schedule(max_steps: int, top_k: int, warmup: int = 2, baseline: int = 4,
                  profile: int = 3, measure: int = 5) -> Schedule:
    """The largest schedule with at most ``top_k`` candidates within ``max_steps``
    steps; ``candidates`` is 0 when not even one fits."""
    fixed = warmup + baseline + 2 * profile + 1
    per = TRANSITION_STEPS + measure
    k = max(0, min(top_k, (max_steps - fixed) // per))
    return Schedule(warmup, baseline, profile, measure, k)
