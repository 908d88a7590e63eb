"""Drift: whether the running configuration's step time has departed from what its decision measured.

After the steady-state check, the configuration that runs is watched in windows of
``WINDOW`` steps (all ranks, the slowest per step, :class:`gdat.decide.windows.WindowStats`).
Its reference is the window the decision measured it on (``m_ref``, ``n_ref``
steps); the noise ``sigma`` is pooled over both (:func:`gdat.decide.windows.noise_sigma_s`).
A window departs when

    |m - m_ref| > max(Z * 1.2533 * sigma * sqrt(1 / n + 1 / n_ref), FLOOR * m_ref)

with ``Z = 3`` and ``FLOOR = 10%``; a departure is *sustained* when ``SUSTAIN``
(2) windows in a row depart in the same direction.  Then the link is measured
again: where its class changed (a link slowing mid-run, as clouds and shared
clusters do), tuning starts again under the new rate; otherwise the load changed
(a co-tenant), and the newest window becomes the reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from gdat.decide.windows import WindowStats, noise_sigma_s

__all__ = ["DriftWatch", "WINDOW", "Z", "FLOOR", "SUSTAIN"]

WINDOW = 10
Z = 3.0
FLOOR = 0.10
SUSTAIN = 2


@dataclass
class DriftWatch:
    """The watch over one running configuration (module docstring)."""

    reference: WindowStats
    departures: list[int] = field(default_factory=list)  # the sign of each departing window in a row

    def threshold_s(self, window: WindowStats) -> float:
        """The departure a window must show, seconds."""
        sigma = 1.2533 * noise_sigma_s([self.reference, window])
        se = sigma * math.sqrt(1 / len(window.step_s) + 1 / len(self.reference.step_s))
        return max(Z * se, FLOOR * self.reference.median_s)

    def observe(self, window: WindowStats) -> bool:
        """Add ``window``; whether the departure is now sustained."""
        gap = window.median_s - self.reference.median_s
        if abs(gap) <= self.threshold_s(window):
            self.departures.clear()
            return False
        sign = 1 if gap > 0 else -1
        if self.departures and self.departures[-1] != sign:
            self.departures.clear()
        self.departures.append(sign)
        return len(self.departures) >= SUSTAIN

    def rebase(self, window: WindowStats) -> None:
        """The load changed and the link did not: ``window`` is the new reference."""
        self.reference = window
        self.departures.clear()
