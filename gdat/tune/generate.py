"""Step 2 of the tuning loop: the first round's candidates, ranked on rank 0 and sent to every rank.

From the profile of the user's own steps, rank 0 generates and ranks the plans to
measure (:func:`gdat.schedule.candidates.generate_candidates`; with
``--gdat-compress``, the plan compressing the exposed tail takes the last place,
:func:`gdat.schedule.candidates.with_compressed_candidate`), and says what
``find_unused_parameters=True`` costs where the profile saw no unused parameter
(:func:`gdat.schedule.find_unused.find_unused_cost`).  Round 1 measures ``top_k``
candidates, leaving 2 blocks for a second round when the calendar has them.

Resuming inconclusive evidence (``ctx.prior``), the candidates the sequential test
has not rejected come first, largest log-likelihood ratio first, so that their
evidence grows; the model's ranking fills the rest.  Evidence paired with another
user's configuration is not resumed.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch.distributed as dist

from gdat.core import log
from gdat.core.collectives import broadcast_from_first
from gdat.core.plan import BucketPlan
from gdat.core.profile import Profile
from gdat.decide.calendar import StepCalendar
from gdat.decide.sequential import Evidence, weigh
from gdat.errors import PlanError, ProfileError
from gdat.schedule.candidates import Candidates, RankedPlan, generate_candidates, with_compressed_candidate
from gdat.schedule.find_unused import FindUnusedCost, find_unused_cost
from gdat.tune.context import TuneContext

__all__ = ["first_candidates", "first_round_size"]


def first_round_size(ctx: TuneContext, calendar: StepCalendar) -> int:
    """Round 1's candidates: ``top_k``, leaving 2 blocks for a second round when the
    calendar has them."""
    return min(ctx.config.top_k, max(1, calendar.blocks - 3))


def first_candidates(profile: Profile, ctx: TuneContext, calendar: StepCalendar,
                     group: Any) -> tuple[Candidates, FindUnusedCost | None] | str:
    """The candidates and the cost of ``find_unused_parameters=True`` (module
    docstring), on every rank (a collective on ``group``); or why no plan can be
    built from this profile."""
    found: Any = None
    if dist.get_rank(group) == 0:
        k = first_round_size(ctx, calendar)
        try:
            candidates = generate_candidates(profile, ctx.cost, k, ctx.stored, ctx.calibration)
            if ctx.prior is not None:
                candidates = _resumed(candidates, ctx.prior, k)
            if ctx.compress:
                candidates = with_compressed_candidate(candidates, ctx.compress, k)
            log.info(f"tune: {candidates.describe()}")
            unused = find_unused_cost(profile, candidates.cost)
            if unused is not None:
                log.warn(unused.describe())
            found = (candidates, unused)
        except (ProfileError, PlanError) as e:
            found = f"cannot build candidate plans ({e})"
    return broadcast_from_first(found, group)


def _resumed(found: Candidates, prior: Evidence, k: int) -> Candidates:
    """``found`` with the not-rejected candidates of ``prior`` first (module docstring)."""
    if not found.baseline_plan.same_partition(BucketPlan.from_dict(dict(prior.baseline_plan))):
        log.info("tune: the user's configuration differs from the one the kept evidence was paired with: "
                 "measuring afresh")
        return found
    judged = weigh(prior)
    alive = sorted((i for i, s in enumerate(judged.status) if s != "reject"), key=lambda i: -judged.llr[i])
    leaders = []
    for i in alive:
        plan = BucketPlan.from_dict(dict(prior.plans[i].plan), "evidence")
        if not found.baseline_plan.same_partition(plan):
            leaders.append(RankedPlan(plan, found.simulate(plan)))
    rest = [r for r in found.ranked if not any(r.plan.same_partition(p.plan) for p in leaders)]
    log.info(f"tune: resuming the evidence of {prior.launches} launch(es) ({prior.blocks} paired blocks): "
             f"{len(leaders)} candidate(s) still in the race")
    return replace(found, ranked=tuple((leaders + rest)[: max(k, len(leaders))]))

