"""One frozen record per tuning decision: what was measured, chosen, confirmed or switched back.

The tuning loop builds a :class:`Decision` on every rank when it decides (step 4 of
:mod:`gdat.tune.loop`), and a new one, :meth:`Decision.confirmed`, when the
steady-state confirmation has run (step 5).  Everything said about the decision is
derived from the record by separate functions, each quantity once, here:

* the bank update (:mod:`gdat.bank.decisions`);
* the report (:func:`gdat.report.gdat_report.tuning_report`);
* the lines on stderr and the done line (:mod:`gdat.tune.result`).

Derived quantities (seconds):

* ``baseline_s``: the median of every baseline step (``m_base``);
* the adopted plan (:func:`gdat.decide.confirm.kept`): the winner the verdict
  adopted, until its confirmation; after it, the winner the confirmation held;
* the plan that runs (:func:`gdat.decide.confirm.runs`): the adopted one, or a plan
  on trial (the leader of inconclusive evidence) until the check switches it back;
* ``result_s``, the step of the configuration that runs: ``m_base`` when the user's
  configuration runs (nothing runs in its place, or switched back: a difference
  between two windows of one configuration is drift, not a result); the running
  plan's steady-state median once measured; before that, its paired estimate
  ``m_base + D_w`` (:func:`gdat.decide.verdict.standings`).

The record also holds the knowledge-base key's ``evidence`` as this decision left
it (:class:`gdat.decide.sequential.Evidence`, this launch's blocks and its
steady-state window pooled with earlier launches') and the sequential test's
``judgement`` of it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from gdat.core.cost_model import AllreduceCostModel
from gdat.core.plan import BucketPlan
from gdat.core.profile import Profile
from gdat.decide.confirm import Confirmation, kept, runs
from gdat.decide.sequential import Evidence, Judgement, index_of, weigh
from gdat.decide.verdict import BASELINE, Block, Standing, Verdict, baseline_median_s, standings
from gdat.decide.windows import WindowStats, pooled
from gdat.schedule.candidates import Candidates, Correction, RankedPlan
from gdat.schedule.find_unused import FindUnusedCost

__all__ = ["Decision"]


@dataclass(frozen=True)
class Decision:
    """One tuning decision (module docstring).

    * ``tuning_name``, ``ladder`` (the allreduce fit of construction's
      microbenchmark), ``topology`` (as the report lists it) and ``compress`` (the
      reduced dtype lossy candidates could use, ``""``: none): the job;
    * ``profile``, ``found`` (the model fitted to it and the first candidates),
      ``plans`` (every candidate, in measurement index order), ``blocks`` (every
      measurement block), ``compression_errors`` (per measured compressed candidate,
      each compressed bucket's relative error) and ``find_unused``: what was measured;
    * ``verdict``, ``correction`` (the model as measurement corrected it),
      ``decision_step`` and ``tuning_time_s``: what was chosen, when;
    * ``steady`` and ``check``: the steady-state window and, where a plan runs, its
      paired check (``None``: not taken yet);
    * ``evidence`` and ``judgement``: what the verdict rests on (module docstring).
    """

    tuning_name: str
    ladder: AllreduceCostModel
    topology: Mapping[str, Any]
    compress: str
    profile: Profile
    found: Candidates
    plans: tuple[RankedPlan, ...]
    blocks: tuple[Block, ...]
    verdict: Verdict
    correction: Correction
    decision_step: int
    tuning_time_s: float
    compression_errors: Mapping[int, Mapping[int, float]] = field(default_factory=dict)
    find_unused: FindUnusedCost | None = None
    steady: WindowStats | None = None
    check: Confirmation | None = None
    evidence: Evidence | None = None
    judgement: Judgement | None = None

    def confirmed(self, steady: WindowStats, check: Confirmation | None, tuning_time_s: float,
                  evidence: Evidence | None) -> "Decision":
        """The record after the steady-state confirmation (the check's window added
        to the evidence, and a plan on trial's judgement)."""
        judgement = weigh(evidence) if evidence is not None else self.judgement
        return replace(self, steady=steady, check=check, tuning_time_s=tuning_time_s, evidence=evidence,
                       judgement=judgement)

    @property
    def confident(self) -> bool:
        """Whether the evidence settles the key: the plan that runs adopted by the
        test, or, where the user's configuration runs, every candidate rejected (a
        compressed plan the test adopted but that does not run settles nothing)."""
        j = self.judgement
        if j is None:
            return self.verdict.confident
        if self.running is None:
            return j.all_rejected
        k = index_of(self.evidence, self.running.plan.to_dict())
        return k is not None and j.status[k] == "adopt"

    @property
    def winner(self) -> RankedPlan | None:
        """The candidate the verdict chose (adopted, or on trial), if any."""
        return None if self.verdict.winner is None else self.plans[self.verdict.winner]

    @property
    def adopted(self) -> RankedPlan | None:
        """The candidate that runs and is kept (module docstring); ``None``: the user's configuration."""
        i = kept(self.verdict, self.check)
        return None if i is None else self.plans[i]

    @property
    def reverted(self) -> bool:
        """Whether the steady-state check switched the chosen plan back."""
        return self.check is not None and self.check.outcome == "switched back"

    @property
    def running(self) -> RankedPlan | None:
        """The candidate that runs (module docstring); ``None``: the user's configuration."""
        i = runs(self.verdict, self.check)
        return None if i is None else self.plans[i]

    @property
    def runs(self) -> BucketPlan:
        """The plan that runs: the running candidate's, else the user's configuration."""
        return self.found.baseline_plan if self.running is None else self.running.plan

    @functools.cached_property
    def standings(self) -> dict[int, Standing]:
        """Every measured candidate's paired evidence, by candidate index."""
        return {st.candidate: st for st in standings(self.blocks)}

    def window_of(self, plan: int) -> WindowStats:
        """Every measured step of ``plan`` (a candidate index or ``BASELINE``) as one window."""
        return pooled([b.window for b in self.blocks if b.plan == plan])

    @property
    def baseline_s(self) -> float:
        return baseline_median_s(self.blocks)

    @property
    def result_s(self) -> float:
        """The step of the configuration that runs (module docstring), seconds."""
        if self.running is None:
            return self.baseline_s
        if self.steady is not None:
            return self.steady.median_s
        return self.baseline_s + self.standings[self.verdict.winner].diff_s

    @property
    def running_window(self) -> WindowStats | None:
        """What the running plan measured: its steady state once taken, else its blocks."""
        if self.running is None:
            return None
        return self.steady if self.steady is not None else self.window_of(self.verdict.winner)

    def measured(self) -> list[tuple[BucketPlan, WindowStats]]:
        """Every measured plan with its steps, the user's configuration first."""
        ran = sorted({b.plan for b in self.blocks} - {BASELINE})
        return [(self.found.baseline_plan, self.window_of(BASELINE)),
                *((self.plans[i].plan, self.window_of(i)) for i in ran)]
