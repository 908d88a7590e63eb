"""The confirmation: whether a decided plan holds in steady state.

Paired like the blocks of :mod:`gdat.decide.verdict`: after the decision the plan
that runs (adopted, or on trial) runs a steady-state window of ``n_s`` steps, then
the user's configuration one block of ``n_a`` steps.  The window's reference is the
baseline interpolated between the last baseline block of tuning (``n_b`` steps) and
that block after it, ``ref = (1-w) m_before + w m_after`` (``w``: the window's
position between the two, in steps), so a load change between tuning and steady
state cancels.  ``d = m_steady - ref`` with ``se(d)^2 = (1.2533 sigma)^2 (1/n_s +
(1-w)^2/n_b + w^2/n_a)`` (``sigma`` pooled over every block and both windows)
(:func:`steady_state_check`).

The window is judged as what it is, one more paired observation
(:func:`confirm`): ``d`` with variance ``se(d)^2`` joins the key's evidence and the
sequential test weighs it again (:func:`gdat.decide.sequential.weigh`).  The
plan's status there decides: adopted, the plan holds (a plan on trial is adopted);
rejected, the user's configuration comes back; inconclusive, the plan runs on, on
trial, while measuring goes on (an adopted plan whose evidence the window took
back below the adoption bound is kept no longer until it is settled again).  An
inconclusive plan runs on only as the launch's verdict would let one run
(:func:`gdat.decide.judge.judge`), else the user's configuration comes back: its
window not slower than the baseline around it beyond the noise, ``d > max(z *
se(d), floor * ref)`` (``regressed``: a plan may run only while it is not seen to
cost the user), the plan exact (``unsettled``: a compressed plan runs only while
adopted) and ahead in the pooled evidence (``behind``).  No single window, lucky or
unlucky, outweighs the blocks the decision rests on: a window that shows a smaller
gain than the blocks did lowers the evidence by its own weight, not by a verdict of
its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from gdat.decide.sequential import Evidence, Judgement, Observation, index_of, weigh, with_observation
from gdat.decide.verdict import BASELINE, FLOOR, Block, Verdict, Z
from gdat.decide.windows import WindowStats, noise_sigma_s

__all__ = ["Confirmation", "steady_state_check", "confirm", "probe_observation", "kept", "runs"]


@dataclass(frozen=True)
class Confirmation:
    """The steady-state check of a decided plan (module docstring): ``reference_s``
    the interpolated baseline, ``diff_s`` the window's median minus it (negative:
    faster), ``var_s2`` its variance, ``steps`` the window's steps, ``threshold_s``
    the noise a slower window must exceed to send the plan back, ``after`` the
    baseline block measured after the window; once judged (:func:`confirm`), the
    sequential test's ``judgement`` with this window and the plan's ``status`` in it
    (adopt, reject, continue, or one of :func:`confirm`'s reasons to switch back:
    regressed, unsettled, behind)."""

    reference_s: float
    diff_s: float
    var_s2: float
    steps: int
    threshold_s: float
    after: WindowStats
    judgement: Judgement | None = None
    status: str | None = None

    @property
    def outcome(self) -> str:
        """``holds`` (the plan stays, adopted), ``switched back`` (the user's
        configuration comes back) or ``continues`` (the plan runs on, on trial, the
        evidence inconclusive)."""
        if self.status is None:
            raise ValueError("the steady-state window has not been judged yet (confirm)")
        return "holds" if self.status == "adopt" else "continues" if self.status == "continue" else "switched back"

    @property
    def holds(self) -> bool:
        return self.outcome == "holds"

    @property
    def why_switched_back(self) -> str:
        """Why the outcome is ``switched back``, in words."""
        return {"reject": "rejected by the sequential test",
                "unsettled": "a compressed plan runs only while the sequential test holds it adopted",
                "behind": "no longer ahead of the user's configuration in the pooled evidence"}.get(
            self.status, f"slower beyond the noise ({self.threshold_s * 1e3:.2f} ms)")

    def observation(self, launch: int) -> Observation:
        """This window as one paired observation (in launch ``launch``)."""
        return Observation(self.diff_s, self.var_s2, self.steps, launch)

    def to_dict(self) -> dict[str, object]:
        return {"baseline_after": self.after.to_dict(), "reference_ms": self.reference_s * 1e3,
                "diff_ms": self.diff_s * 1e3, "se_ms": self.var_s2 ** 0.5 * 1e3, "threshold_ms": self.threshold_s * 1e3,
                "outcome": self.outcome, "holds": self.holds, "sequential_status": self.status}


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


def confirm(check: Confirmation, evidence: Evidence, plan: dict[str, object], launch: int,
            compressed: bool = False) -> tuple[Confirmation, Evidence]:
    """The running ``plan``'s check, judged by the sequential test with its window
    added to ``evidence`` (module docstring); returns the check and the evidence.
    Where the test leaves it inconclusive, the plan runs on trial only as the
    launch's verdict would let it (:func:`gdat.decide.judge.judge`): not slower than
    the baseline around the window beyond the noise (``regressed``), exact
    (``compressed``: a compressed plan runs only while adopted, ``unsettled``), and
    ahead of the user's configuration in the pooled evidence (``behind``)."""
    evidence = with_observation(evidence, plan, check.observation(launch))
    judgement = weigh(evidence)
    k = index_of(evidence, plan)
    status = judgement.status[k]
    if status == "continue":
        if check.diff_s > check.threshold_s:
            status = "regressed"
        elif compressed:
            status = "unsettled"
        elif evidence.plans[k].mean_s >= 0:
            status = "behind"
    return replace(check, judgement=judgement, status=status), evidence


def kept(verdict: Verdict, check: Confirmation | None) -> int | None:
    """The candidate adopted and kept after ``verdict`` and its steady-state
    ``check`` (``None``: not taken yet): the winner, adopted by the verdict and not
    yet checked, or held by its check."""
    if verdict.winner is None:
        return None
    held = check.holds if check is not None else not verdict.trial
    return verdict.winner if held else None


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

