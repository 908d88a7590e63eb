"""The verdict: which plans are measured and when a candidate is adopted.

Two plans, two windows (:func:`decide`, :func:`beats`).  ``challenger`` beats
``reference`` when ``m_ref - m_ch > max(z * sqrt(se_ref^2 + se_ch^2), floor * m_ref)``
with ``z = 2.5`` and ``floor = 1%`` (medians and standard errors of
:class:`gdat.decide.windows.WindowStats`).  The bank's replacement rule uses it.

Interleaved blocks (:func:`standings`, :func:`decide_blocks`).  The tuner measures
the user's configuration (the baseline) and the candidates in blocks of a few
steps, in rounds that each hold the baseline once and every contender once, the
baseline first in odd rounds and last in even ones.  Each candidate block is
compared with the baseline *at the same time*: its reference is the baseline's
block median interpolated linearly (in block position) between the nearest
baseline block before it and the nearest after it (the nearest one alone at an
end), so a drift of the machine that is linear over a few blocks cancels.  Per
candidate ``i``, ``D_i`` is the mean of its blocks' paired differences
``m_block - reference`` (negative: faster than the baseline).  Noise: ``sigma``
is 1.4826 times the median absolute deviation of every measured step from its
block's median (the step-to-step noise of the machine, pooled over all blocks, the
block medians themselves left out); a block median has standard error
``se = 1.2533 * sigma / sqrt(measure)``, or more where the baseline's own block
medians ``b_1, b_2, ...`` differ more: a block median's variance is
``max(se^2, var_k(b_{k+1} - b_k) / 2)`` (:func:`block_variance_terms`; the variance
of the successive differences leaves out a linear drift, which the interpolation
cancels; with only two baseline blocks it is ``(b_2 - b_1)^2 / 2``, their one
difference taken as noise, a drift included): the machine's level shifts from block to
block, which the step-to-step noise does not see (on recorded steps of one
configuration they were up to twice it), a paired difference that variance times
``1 + w^2 + (1-w)^2`` (``w``: the interpolation weight) and ``D_i`` the mean of its blocks'
variances over their count.  ``i``'s threshold is ``T_i = max(z * se(D_i),
floor * m_base)`` (``m_base``: median of every baseline step).

* Adoption: the candidate with the smallest ``D_i`` among those with
  ``-D_i > T_i``; none such: a trial (below) or the baseline stays.
* Successive halving (:func:`contenders`): after each round a candidate is dropped
  when it is clearly slower than the best one, ``D_i - D_best > max(z *
  sqrt(se_i^2 + se_best^2), floor * m_base)``, or than the baseline, ``D_i > T_i``.
  The survivors, with new plans the corrected model predicts faster than the best
  estimate so far (:mod:`gdat.schedule.candidates`), make the next round, best
  estimate first, as many as the remaining blocks hold.
* Trial (:func:`decide_blocks`): when no candidate clears its threshold, the one
  with the largest gain is still tried in steady state if it leads the baseline by
  more than one standard error and the 1% floor, ``-D_i > max(SCREEN_Z * se(D_i),
  floor * m_base)`` with ``SCREEN_Z = 1``: the steady-state window spends more
  steps where the decision is close.
  Its confirmation weighs both measurements (:mod:`gdat.decide.confirm`).  A
  compressed candidate is never tried on a lead short of its threshold.
* Noisy run: the baseline against itself, ``z * sqrt(2) * se``, or any candidate's
  threshold exceeds 5% of ``m_base``.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from typing import Collection, Sequence

from gdat.decide.windows import WindowStats, noise_sigma_s, pooled

__all__ = ["Verdict", "decide", "beats", "Block", "Standing", "BASELINE", "standings", "step_sigma",
           "decide_blocks", "decide_blocks_lossy_last", "contenders", "round_order", "standing_of",
           "paired_differences", "block_variance_terms", "is_noisy", "baseline_median_s", "Z", "SCREEN_Z", "FLOOR",
           "NOISY"]

Z = 2.5
SCREEN_Z = 1.0
FLOOR = 0.01
NOISY = 0.05
BASELINE = -1


@dataclass(frozen=True)
class Verdict:
    """The decision: ``winner`` is an index into the candidates, or ``None`` (keep
    the baseline); ``noise_s`` the threshold the winner had to beat (the largest
    threshold when there is no winner); ``trial``: the winner is not adopted (yet):
    it runs until the steady-state check, which adopts it or switches back;
    ``confident``: whether the evidence settled the question for this knowledge-base
    key (:mod:`gdat.decide.judge`), so that later launches need not measure again."""

    winner: int | None
    noise_s: float
    noisy: bool
    reason: str
    trial: bool = False
    confident: bool = True


def _threshold(base: WindowStats, cand: WindowStats) -> float:
    return max(Z * math.hypot(base.se_s, cand.se_s), FLOOR * base.median_s)


def decide(baseline: WindowStats, candidates: Sequence[WindowStats | None]) -> Verdict:
    """Adopt the fastest candidate window that beats the baseline window by more
    than the noise (``None`` entries were not measured and never win)."""
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


# --- interleaved blocks ---------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """One measured block: the plan (``BASELINE`` or a candidate index), the round
    and the window."""

    plan: int
    round: int
    window: WindowStats

    def to_dict(self) -> dict[str, object]:
        return {"plan": "baseline" if self.plan == BASELINE else self.plan, "round": self.round,
                **self.window.to_dict()}


@dataclass(frozen=True)
class Standing:
    """Candidate ``candidate``'s paired evidence: ``diff_s`` the mean paired
    difference to the baseline (negative: faster), ``se_s`` its standard error,
    ``blocks`` how many blocks it was measured in, ``threshold_s`` the gain it must
    show to be adopted."""

    candidate: int
    diff_s: float
    se_s: float
    blocks: int
    threshold_s: float


def step_sigma(blocks: Sequence[Block]) -> float:
    """The machine's step-to-step noise (module docstring), seconds."""
    return noise_sigma_s([b.window for b in blocks])


def baseline_median_s(blocks: Sequence[Block]) -> float:
    """Median of every baseline step."""
    return pooled([b.window for b in blocks if b.plan == BASELINE]).median_s


def paired_differences(blocks: Sequence[Block]) -> dict[int, list[tuple[float, float, int]]]:
    """Per candidate index, each of its blocks' paired difference to the baseline
    interpolated around it (module docstring): ``(d seconds, variance seconds^2,
    measured steps)``; nothing without a baseline block."""
    base_at = [j for j, b in enumerate(blocks) if b.plan == BASELINE]
    if not base_at:
        return {}
    within, between = block_variance_terms(blocks)
    paired: dict[int, list[tuple[float, float, int]]] = {}
    for j, b in enumerate(blocks):
        if b.plan == BASELINE:
            continue
        before = max((a for a in base_at if a < j), default=None)
        after = min((a for a in base_at if a > j), default=None)
        if before is None or after is None:
            ref, var = blocks[before if after is None else after].window.median_s, 2.0
        else:
            w = (j - before) / (after - before)
            ref = (1 - w) * blocks[before].window.median_s + w * blocks[after].window.median_s
            var = 1.0 + w * w + (1 - w) * (1 - w)
        n = len(b.window.step_s)
        paired.setdefault(b.plan, []).append((b.window.median_s - ref, var * max(within / n, between), n))
    return paired


def block_variance_terms(blocks: Sequence[Block]) -> tuple[float, float]:
    """``((1.2533 sigma)^2, var_k(b_{k+1} - b_k) / 2)``, seconds squared: a one-step
    block median's variance from the step-to-step noise, and a block median's from
    the baseline's successive block medians (``(b_2 - b_1)^2 / 2`` with two, whose
    one difference cannot tell a drift from a level shift; 0 with one)."""
    medians = [b.window.median_s for b in blocks if b.plan == BASELINE]
    steps_between = [b - a for a, b in zip(medians, medians[1:])]
    if len(steps_between) >= 2:
        between = statistics.variance(steps_between) / 2
    else:
        between = sum(d * d for d in steps_between) / 2
    return (1.2533 * step_sigma(blocks)) ** 2, between


def standings(blocks: Sequence[Block]) -> list[Standing]:
    """Every measured candidate's paired evidence (module docstring), by candidate index."""
    paired = paired_differences(blocks)
    if not paired:
        return []
    m_base = baseline_median_s(blocks)
    out = []
    for i in sorted(paired):
        diffs = [d for d, _, _ in paired[i]]
        se = math.sqrt(statistics.fmean(v for _, v, _ in paired[i]) / len(diffs))
        out.append(Standing(i, statistics.fmean(diffs), se, len(diffs), max(Z * se, FLOOR * m_base)))
    return out


def is_noisy(blocks: Sequence[Block]) -> bool:
    """Whether the run was noisy (module docstring)."""
    return _noisy(blocks, standings(blocks))


def _noisy(blocks: Sequence[Block], table: Sequence[Standing]) -> bool:
    m_base = baseline_median_s(blocks)
    measure = statistics.median(len(b.window.step_s) for b in blocks)
    self_noise = Z * math.sqrt(2.0) * 1.2533 * step_sigma(blocks) / math.sqrt(measure)
    return max([self_noise, *(s.threshold_s for s in table)]) > NOISY * m_base


def standing_of(blocks: Sequence[Block], candidate: int) -> Standing:
    """Candidate ``candidate``'s paired evidence (it must have been measured)."""
    return next(st for st in standings(blocks) if st.candidate == candidate)


def decide_blocks(blocks: Sequence[Block]) -> Verdict:
    """Adopt the candidate with the largest paired gain beyond its threshold (module
    docstring), or keep the baseline."""
    table = standings(blocks)
    noisy = _noisy(blocks, table)
    passing = [s for s in table if -s.diff_s > s.threshold_s]
    if not passing:
        noisy_run = " (the run was noisy)" if noisy else ""
        lead = min(table, key=lambda s: s.diff_s, default=None)
        if lead is not None and -lead.diff_s > max(SCREEN_Z * lead.se_s, FLOOR * baseline_median_s(blocks)):
            return Verdict(lead.candidate, lead.threshold_s, noisy,
                           f"candidate led the baseline by {-lead.diff_s * 1e3:.2f} ms over {lead.blocks} paired "
                           f"block(s), short of the noise threshold {lead.threshold_s * 1e3:.2f} ms{noisy_run}: "
                           f"tried in steady state", trial=True)
        why = "no candidate beat the baseline by more than the measured noise in paired blocks" if table else \
            "no candidate plan differed from the baseline"
        noise = max((s.threshold_s for s in table), default=FLOOR * baseline_median_s(blocks))
        return Verdict(None, noise, noisy, why + noisy_run)
    best = min(passing, key=lambda s: s.diff_s)
    return Verdict(best.candidate, best.threshold_s, noisy,
                   f"candidate beat the baseline by {-best.diff_s * 1e3:.2f} ms over {best.blocks} paired "
                   f"block(s) (noise threshold {best.threshold_s * 1e3:.2f} ms)")


def decide_blocks_lossy_last(blocks: Sequence[Block], lossy: Collection[int]) -> Verdict:
    """:func:`decide_blocks`; when it picks a lossy (compressed) candidate, that one
    wins only if its paired gain also beats the fastest exact configuration measured
    (the baseline or an exact candidate) by ``max(Z * sqrt(se^2 + se_ref^2), FLOOR *
    m_base)``; else the decision among the exact plans stands."""
    verdict = decide_blocks(blocks)
    if verdict.winner is None or verdict.winner not in lossy:
        return verdict
    if verdict.trial:
        fallback = decide_blocks([b for b in blocks if b.plan not in lossy])
        return replace(fallback, reason=fallback.reason + "; the compressed candidate led by less than the noise and "
                       "is not tried")
    table = {st.candidate: st for st in standings(blocks)}
    win = table[verdict.winner]
    ref_diff, ref_se = min([(0.0, 0.0), *((st.diff_s, st.se_s) for c, st in table.items() if c not in lossy)])
    margin = max(Z * math.hypot(win.se_s, ref_se), FLOOR * baseline_median_s(blocks))
    if ref_diff - win.diff_s > margin:
        return Verdict(verdict.winner, margin, verdict.noisy,
                       f"compressed candidate beat the fastest exact configuration by "
                       f"{(ref_diff - win.diff_s) * 1e3:.2f} ms in paired blocks (noise threshold "
                       f"{margin * 1e3:.2f} ms)")
    fallback = decide_blocks([b for b in blocks if b.plan not in lossy])
    return replace(fallback, reason=fallback.reason + "; the compressed candidate did not beat the fastest exact "
                   "configuration by more than the noise")


def contenders(blocks: Sequence[Block]) -> list[Standing]:
    """The candidates not clearly slower than the best one or than the baseline
    (successive halving, module docstring), best first."""
    table = standings(blocks)
    if not table:
        return []
    m_base = baseline_median_s(blocks)
    best = min(table, key=lambda s: s.diff_s)
    keep = [s for s in table if s.diff_s <= s.threshold_s and
            (s is best or s.diff_s - best.diff_s <= max(Z * math.hypot(s.se_s, best.se_s), FLOOR * m_base))]
    return sorted(keep, key=lambda s: s.diff_s)


def round_order(round_no: int, plans: Sequence[int]) -> list[int]:
    """A round's blocks: the baseline first in odd rounds (1, 3, ...), last in even ones."""
    return [BASELINE, *plans] if round_no % 2 == 1 else [*plans, BASELINE]
