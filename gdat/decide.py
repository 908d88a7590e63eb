"""The decision: when a measured candidate plan is adopted.

A candidate is adopted only if its median step beats the baseline's by more than
the measured noise: ``m_base - m_cand > max(z * sqrt(se_base^2 + se_cand^2),
floor * m_base)`` with ``z = 2`` and ``floor = 1%`` (medians and standard errors of
:class:`gdat.measure.WindowStats`).  Among candidates that pass, the fastest wins;
if none passes, the baseline stays.  The run is called noisy when the largest such
threshold (the baseline against itself included) exceeds 5% of the baseline median.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from gdat.measure import WindowStats

__all__ = ["Verdict", "decide", "decide_lossy_last", "beats", "Z", "FLOOR", "NOISY"]

Z = 2.0
FLOOR = 0.01
NOISY = 0.05


@dataclass(frozen=True)
class Verdict:
    """The decision: ``winner`` is an index into the candidates, or ``None`` (keep
    the baseline); ``noise_s`` the threshold the winner had to beat (the largest
    threshold when there is no winner)."""

    winner: int | None
    noise_s: float
    noisy: bool
    reason: str


def _threshold(base: WindowStats, cand: WindowStats) -> float:
    return max(Z * math.hypot(base.se_s, cand.se_s), FLOOR * base.median_s)


def decide(baseline: WindowStats, candidates: Sequence[WindowStats | None]) -> Verdict:
    """Adopt the fastest candidate that beats the baseline by more than the noise
    (``None`` entries were not measured and never win)."""
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
        return Verdict(None, worst_noise, noisy, why + (" (the run was noisy)" if noisy else ""))
    median, i, noise = best
    return Verdict(i, noise, noisy,
                   f"candidate beat the baseline by {(baseline.median_s - median) * 1e3:.2f} ms "
                   f"(noise threshold {noise * 1e3:.2f} ms)")


def beats(reference: WindowStats, challenger: WindowStats) -> bool:
    """Whether ``challenger`` beats ``reference`` by more than the noise (the rule
    of :func:`decide` with ``reference`` as the baseline)."""
    return decide(reference, [challenger]).winner == 0


def decide_lossy_last(baseline: WindowStats, candidates: Sequence[WindowStats | None],
                      lossy: Sequence[bool]) -> Verdict:
    """:func:`decide` among the exact candidates; then a lossy (compressed) one wins
    instead only if it beats, by more than the noise, the fastest exact
    configuration measured (the baseline or an exact candidate): precision is
    traded only for time that real steps confirm."""
    exact = decide(baseline, [None if lo else c for c, lo in zip(candidates, lossy, strict=True)])
    measured = [baseline, *(c for c, lo in zip(candidates, lossy) if c is not None and not lo)]
    reference = min(measured, key=lambda w: w.median_s)
    squeezed = decide(reference, [c if lo else None for c, lo in zip(candidates, lossy)])
    if squeezed.winner is None:
        return exact
    return Verdict(squeezed.winner, squeezed.noise_s, exact.noisy or squeezed.noisy,
                   f"compressed candidate beat the fastest exact configuration by "
                   f"{(reference.median_s - candidates[squeezed.winner].median_s) * 1e3:.2f} ms "
                   f"(noise threshold {squeezed.noise_s * 1e3:.2f} ms)")
