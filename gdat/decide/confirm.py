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

A plan on trial (:attr:`gdat.decide.verdict.Verdict.trial`: the evidence was
inconclusive and it leads) is judged by the sequential test instead
(:func:`confirm_trial`): the window's ``d`` with variance ``se(d)^2`` is one more
paired observation of it, and the key's evidence with it is tested again
(:func:`gdat.decide.sequential.weigh`).  Adopted, the plan holds; rejected, the
user's configuration comes back; still inconclusive, the plan goes on running
while measuring goes on (:attr:`Confirmation.outcome`), unless its window was
slower than the baseline around it beyond the noise, ``d > max(z * se(d), floor *
ref)`` (``regressed``): a plan on trial may run only while it is not seen to cost
the user (a single window cannot reject it, as differences are clipped, but it can
send it back).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from gdat.decide.sequential import Evidence, Judgement, Observation, index_of, weigh, with_observation
from gdat.decide.verdict import BASELINE, FLOOR, Block, Verdict, Z
from gdat.decide.windows import WindowStats, noise_sigma_s

__all__ = ["Confirmation", "steady_state_check", "confirm_trial", "probe_observation", "kept", "runs"]


@dataclass(frozen=True)
class Confirmation:
    """The steady-state check of a decided plan (module docstring): ``reference_s``
    the interpolated baseline, ``diff_s`` the window's median minus it (negative:
    faster), ``var_s2`` its variance, ``steps`` the window's steps, ``threshold_s``
    the gain an adopted plan must show, ``after`` the baseline block measured after
    the window; for a plan on trial, the sequential test's ``judgement`` with this
    window and the plan's ``trial_status`` in it (adopt, reject, continue)."""

    reference_s: float
    diff_s: float
    var_s2: float
    steps: int
    threshold_s: float
    after: WindowStats
    judgement: Judgement | None = None
    trial_status: str | None = None

    @property
    def outcome(self) -> str:
        """``holds`` (the plan stays, adopted), ``switched back`` (the user's
        configuration comes back) or ``continues`` (a plan on trial runs on, the
        evidence inconclusive)."""
        if self.trial_status is None:
            return "holds" if -self.diff_s > self.threshold_s else "switched back"
        return {"adopt": "holds", "reject": "switched back", "regressed": "switched back"}.get(self.trial_status,
                                                                                              "continues")

    @property
    def holds(self) -> bool:
        return self.outcome == "holds"

    def observation(self, launch: int) -> Observation:
        """This window as one paired observation (in launch ``launch``)."""
        return Observation(self.diff_s, self.var_s2, self.steps, launch)

    def to_dict(self) -> dict[str, object]:
        return {"baseline_after": self.after.to_dict(), "reference_ms": self.reference_s * 1e3,
                "diff_ms": self.diff_s * 1e3, "se_ms": self.var_s2 ** 0.5 * 1e3, "threshold_ms": self.threshold_s * 1e3,
                "outcome": self.outcome, "holds": self.holds, "sequential_status": self.trial_status}


def steady_state_check(blocks: Sequence[Block], steady: WindowStats, after: WindowStats, w: float) -> Confirmation:
    """Whether the decided plan's ``steady`` window beats the baseline around it: the
    last baseline block of ``blocks`` before it and ``after`` it, ``w`` its position
    between the two (0: at the block before, 1: at ``after``)."""
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"interpolation weight {w} outside [0, 1]")
    before = next(b.window for b in reversed(blocks) if b.plan == BASELINE)
    ref = (1 - w) * before.median_s + w * after.median_s
    sigma = 1.2533 * noise_sigma_s([*(b.window for b in blocks), steady, after])
    se = sigma * math.sqrt(1 / len(steady.step_s) + (1 - w) ** 2 / len(before.step_s) + w * w / len(after.step_s))
    return Confirmation(ref, steady.median_s - ref, se * se, len(steady.step_s), max(Z * se, FLOOR * ref), after)


def confirm_trial(check: Confirmation, evidence: Evidence, plan: dict[str, object],
                  launch: int) -> tuple[Confirmation, Evidence]:
    """A plan on trial's check, judged by the sequential test with its window added
    to ``evidence`` (module docstring); returns the check and the evidence."""
    evidence = with_observation(evidence, plan, check.observation(launch))
    judgement = weigh(evidence)
    status = judgement.status[index_of(evidence, plan)]
    if status == "continue" and check.diff_s > check.threshold_s:
        status = "regressed"
    return replace(check, judgement=judgement, trial_status=status), evidence


def kept(verdict: Verdict, check: Confirmation | None) -> int | None:
    """The candidate adopted and kept after ``verdict`` and its steady-state
    ``check`` (``None``: not taken yet): the winner, unless the check switched it
    back, or it is on trial and not adopted (yet)."""
    if verdict.winner is None or (check is not None and not check.holds) or (verdict.trial and check is None):
        return None
    return verdict.winner


def runs(verdict: Verdict, check: Confirmation | None) -> int | None:
    """The candidate that runs (``None``: the user's configuration): the adopted
    one, or a plan on trial until the check switches it back."""
    if verdict.winner is None or (check is not None and check.outcome == "switched back"):
        return None
    return verdict.winner


def probe_observation(before: WindowStats, probe: WindowStats, after: WindowStats, noise: Sequence[WindowStats],
                      plan_runs: bool, launch: int) -> Observation:
    """One paired observation of a candidate from a probe (:mod:`gdat.tune.steady`):
    the configuration believed slower measured in ``probe``, between windows
    ``before`` and ``after`` of the one that runs.  ``d`` is the candidate's median
    minus the user's configuration's, the reference the mean of the two around
    windows: ``d = m_probe - ref`` when the user's configuration runs (the candidate
    is probed), ``ref - m_probe`` when the candidate runs (``plan_runs``); its
    variance ``(1.2533 sigma)^2 (1/n_p + (1/n_b + 1/n_a) / 4)``, ``sigma`` pooled
    over ``noise`` and the three windows."""
    ref = (before.median_s + after.median_s) / 2
    diff = (ref - probe.median_s) if plan_runs else (probe.median_s - ref)
    sigma = 1.2533 * noise_sigma_s([*noise, before, probe, after])
    var = sigma ** 2 * (1 / len(probe.step_s) + (1 / len(before.step_s) + 1 / len(after.step_s)) / 4)
    return Observation(diff, var, len(probe.step_s), launch)

