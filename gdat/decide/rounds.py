"""Rank 0's choice of the next measurement block: rounds of successive halving,
each round's newcomers chosen by the model as every measurement so far corrected it.

Round 1 runs the baseline (the user's configuration) and then the first
candidates, in :func:`gdat.decide.verdict.round_order`.  When a round's blocks are spent
and ``left`` blocks remain:

1. refit the model's correction (:func:`gdat.schedule.candidates.fit_correction`)
   to every measured plan's drift-corrected step estimate ``m_base + D_i``
   seconds (``m_base`` the baseline blocks' median, ``D_i`` candidate ``i``'s
   paired difference, :func:`gdat.decide.verdict.standings`);
2. admit up to ``left - 1`` plans not measured yet that the corrected model ranks
   best (:func:`gdat.schedule.candidates.admissible`); none when the search ranked
   no plan different from the user's configuration in the first place (then only
   the baseline is measured: nothing else is worth the user's steps, nor the
   restart of DDP's runtime logging that a switch brings);
3. the next round runs the ``left - 1`` options of lowest estimate: contenders
   still in the race (:func:`gdat.decide.verdict.contenders`) at ``m_base + D_i``,
   newcomers at their corrected prediction; one block is kept for the baseline.

With no option left, measuring ends after one more baseline block if the last
block was a candidate's.
"""
from __future__ import annotations

from gdat.core import log
from gdat.core.plan import BucketPlan
from gdat.decide.verdict import BASELINE, Block, baseline_median_s, contenders, round_order, standings
from gdat.errors import PlanError, ProfileError
from gdat.schedule.candidates import Candidates, Correction, RankedPlan, admissible, fit_correction

__all__ = ["RoundPlanner"]


class RoundPlanner:
    """Chooses blocks over ``plans`` and ``blocks``, the tuning loop's own lists
    (the loop appends measured blocks and the plans this planner admits)."""

    def __init__(self, found: Candidates, plans: list[RankedPlan], blocks: list[Block]) -> None:
        self.found, self.plans, self.blocks = found, plans, blocks
        self.correction = Correction()
        self.round_no = 1
        self.queue: list[int] = round_order(1, range(len(plans)))[1:]  # this round's blocks still to run

    def next_block(self, left: int) -> tuple[int | None, list[RankedPlan], int]:
        """The plan of the next block (``None``: measuring is over), with ``left``
        blocks remaining including it; the plans it admits, and its round."""
        if left == 0:
            return None, [], self.round_no
        if self.queue:
            return self.queue.pop(0), [], self.round_no
        table = contenders(self.blocks)
        self.refit()
        m_base = baseline_median_s(self.blocks)
        estimates = [(m_base + st.diff_s, st.candidate, None) for st in table]
        best = min([m_base, *(e for e, _, _ in estimates)])
        try:
            new = admissible(self.found, self.correction, [self.found.baseline_plan, *(p.plan for p in self.plans)],
                             left - 1, best) if left >= 2 and self.found.ranked else []
        except (ProfileError, PlanError) as e:  # measuring goes on with the plans at hand
            log.warn(f"cannot rank plans under the corrected model ({e})")
            new = []
        options = sorted(estimates + [(self.correction.predict_s(self.found, r.plan), None, r) for r in new],
                         key=lambda o: o[0])[: left - 1]
        added: list[RankedPlan] = []
        chosen: list[int] = []
        for _, idx, ranked in options:
            if idx is None:
                idx = len(self.plans) + len(added)
                added.append(ranked)
            chosen.append(idx)
        if not chosen:
            if table and self.blocks[-1].plan != BASELINE:  # one more baseline block after the last candidate
                return BASELINE, [], self.round_no
            return None, [], self.round_no
        self.round_no += 1
        self.queue = round_order(self.round_no, chosen)
        return self.queue.pop(0), added, self.round_no

    def measured_estimates(self) -> list[tuple[BucketPlan, float]]:
        """Every measured plan with its drift-corrected estimate, the baseline first."""
        m_base = baseline_median_s(self.blocks)
        return [(self.found.baseline_plan, m_base),
                *((self.plans[st.candidate].plan, m_base + st.diff_s) for st in standings(self.blocks))]

    def refit(self) -> None:
        """Step 1: correct the model to every measurement so far (said when it changes)."""
        measured = self.measured_estimates()
        before, self.correction = self.correction, fit_correction(self.found, measured)
        if self.correction != before:
            log.info(f"tune: model correction {self.correction.extra_alpha_s * 1e3:+.3f} ms per allreduce, "
                     f"offset {self.correction.offset_s * 1e3:+.2f} ms (from {len(measured)} plans)")
