"""The confirmation: whether a decided plan holds in steady state.

Paired like the blocks of :mod:`gdat.decide.verdict`: after adoption the adopted
plan runs a steady-state window of ``n_s`` steps, then the user's configuration one
block of ``n_a`` steps.  The window's reference is the baseline interpolated
between the last baseline block of tuning (``n_b`` steps) and that block after
it, ``ref = (1-w) m_before + w m_after`` (``w``: the window's position between the
two, in steps), so a load change between tuning and steady state cancels.  ``d = m_steady - ref`` with
``se(d)^2 = (1.2533 sigma)^2 (1/n_s + (1-w)^2/n_b + w^2/n_a)`` (``sigma`` pooled
over every block and both windows); the plan holds when
``-d > max(z * se(d), floor * ref)``, else the user's configuration comes back.

A plan on trial (:attr:`gdat.decide.verdict.Verdict.trial`: it led by less than
its threshold) is confirmed by both measurements weighed by their inverse
variances, ``d_c = (D_i / se(D_i)^2 + d / se(d)^2) /
(1 / se(D_i)^2 + 1 / se(d)^2)`` with ``se(d_c)^2 = 1 / (1 / se(D_i)^2 + 1 /
se(d)^2)``, and the plan is adopted when ``-d_c > max(z * se(d_c), floor * ref)``
and the window alone was faster (``d < 0``), else the user's configuration comes
back.  (Two looks at the evidence, each at ``z = 2.5``, about double the
false-adoption rate of one: still under 1.5%.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from gdat.decide.verdict import BASELINE, FLOOR, Block, Standing, Verdict, Z
from gdat.decide.windows import WindowStats, noise_sigma_s

__all__ = ["Confirmation", "steady_state_check", "kept"]


@dataclass(frozen=True)
class Confirmation:
    """The steady-state check of an adopted plan (module docstring): ``reference_s``
    the interpolated baseline, ``diff_s`` the window's median minus it (negative:
    faster), ``threshold_s`` the gain it must show, ``after`` the baseline block
    measured after the window."""

    reference_s: float
    diff_s: float
    threshold_s: float
    after: WindowStats
    combined_s: float | None = None  # a plan on trial: ``d_c``, the window and the blocks weighed together

    @property
    def holds(self) -> bool:
        if self.combined_s is None:
            return -self.diff_s > self.threshold_s
        return self.diff_s < 0 and -self.combined_s > self.threshold_s

    def to_dict(self) -> dict[str, object]:
        return {"baseline_after": self.after.to_dict(), "reference_ms": self.reference_s * 1e3,
                "diff_ms": self.diff_s * 1e3, "threshold_ms": self.threshold_s * 1e3, "holds": self.holds,
                "combined_with_blocks_ms": None if self.combined_s is None else self.combined_s * 1e3}


def steady_state_check(blocks: Sequence[Block], steady: WindowStats, after: WindowStats, w: float,
                       trial: Standing | None = None) -> Confirmation:
    """Whether the adopted plan's ``steady`` window beats the baseline around it: the
    last baseline block of ``blocks`` before it and ``after`` it, ``w`` its position
    between the two (0: at the block before, 1: at ``after``).  ``trial``: the paired
    evidence of a plan on trial, weighed in (module docstring)."""
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"interpolation weight {w} outside [0, 1]")
    before = next(b.window for b in reversed(blocks) if b.plan == BASELINE)
    ref = (1 - w) * before.median_s + w * after.median_s
    sigma = 1.2533 * noise_sigma_s([*(b.window for b in blocks), steady, after])
    se = sigma * math.sqrt(1 / len(steady.step_s) + (1 - w) ** 2 / len(before.step_s) + w * w / len(after.step_s))
    d = steady.median_s - ref
    if trial is None:
        return Confirmation(ref, d, max(Z * se, FLOOR * ref), after)
    weights = 1 / max(trial.se_s, 1e-12) ** 2, 1 / max(se, 1e-12) ** 2
    combined = (trial.diff_s * weights[0] + d * weights[1]) / sum(weights)
    return Confirmation(ref, d, max(Z / math.sqrt(sum(weights)), FLOOR * ref), after, combined)


def kept(verdict: Verdict, check: Confirmation | None) -> int | None:
    """The candidate that runs and is kept after ``verdict`` and its steady-state
    ``check`` (``None``: not taken yet): the winner, unless the check switched it
    back, or it is on trial and not confirmed yet."""
    if verdict.winner is None or (check is not None and not check.holds) or (verdict.trial and check is None):
        return None
    return verdict.winner
