"""Candidate generation: from a profile to the plans the tuner measures.

:func:`generate_candidates`, on the profile of the user's own steps:

1. calibrate the model to the profile (:func:`gdat.schedule.simulator.calibrate`:
   the allreduce cost in situ, the contention factors);
2. take the plan the profile's overlapped steps ran (the user's configuration,
   :func:`gdat.schedule.simulator.measured_plan`) as the baseline;
3. rank (:func:`rank_candidates`): simulate a pool of plans (the optimum, the
   optimum under the contention-free model as a hedge against calibration error,
   optima with at most 2, 4 and 8 buckets, every peer plan of
   :mod:`gdat.schedule.baselines`), drop plans grouping gradients like the baseline
   and plans DDP cannot form, and keep ``k`` distinct ones, the best predicted
   first with near-ties diversified;
4. a stored plan (``REPEAT_TUNE``) is measured too: it takes the last place
   unless it is ranked already (and is left out when DDP cannot form it from this
   run's gradient layout).

With ``--gdat-compress``, :func:`with_compressed_candidate` then gives the last
place to the plan of :func:`gdat.schedule.compress_search.compressed_plan` (when
it predicts a gain and at least two candidates fit: the exact best is always
measured beside it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from gdat.cost_model import AllreduceCostModel, Contention
from gdat.errors import PlanError, PlanNotExpressible
from gdat.plan import BucketPlan
from gdat.schedule.baselines import peer_plans
from gdat.schedule.compress_search import compressed_plan
from gdat.schedule.search import optimal_plan
from gdat.schedule.simulator import Calibration, Simulation, calibrate, lower_bound_s, measured_plan, simulate
from gdat.timeline import Profile, ReadyTimeline

__all__ = ["RankedPlan", "rank_candidates", "Candidates", "generate_candidates", "with_compressed_candidate", "TIE"]

TIE = 0.02


@dataclass(frozen=True)
class RankedPlan:
    """A plan with its simulated step."""

    plan: BucketPlan
    sim: Simulation


@dataclass(frozen=True)
class Candidates:
    """What generation produced: the model fitted to the profile, the baseline
    plan, and the ranked plans to measure (possibly none)."""

    timeline: ReadyTimeline
    calibration: Calibration
    baseline_plan: BucketPlan
    ranked: tuple[RankedPlan, ...]

    @property
    def cost(self) -> AllreduceCostModel:
        return self.calibration.cost

    @property
    def contention(self) -> Contention:
        return self.calibration.contention

    def simulate(self, plan: BucketPlan) -> Simulation:
        """``plan``'s predicted step under the fitted model."""
        return simulate(self.timeline, plan, self.cost, self.contention)

    def lower_bound_s(self) -> float:
        return lower_bound_s(self.timeline, self.cost, self.contention)

    def describe(self) -> str:
        """One line about the profile and the fitted model."""
        t, c = self.timeline, self.contention
        return (f"profile: backward {(t.backward_end_s - t.backward_start_s) * 1e3:.1f} ms, "
                f"allreduce x{self.calibration.comm_scale:.2f} in situ, "
                f"contention sigma={c.compute_stretch:.2f} kappa={c.comm_slowdown:.2f}; "
                f"baseline predicted {self.simulate(self.baseline_plan).step_s * 1e3:.2f} ms, "
                f"lower bound {self.lower_bound_s() * 1e3:.2f} ms")


def generate_candidates(profile: Profile, cost: AllreduceCostModel, k: int,
                        stored: BucketPlan | None = None) -> Candidates:
    """Steps 1-4 of the module docstring; raises :class:`ProfileError` or
    :class:`PlanError` when the profile cannot support a plan."""
    timeline = profile.ready_timeline("compute")
    fitted = calibrate(profile, cost)
    baseline = measured_plan(profile)
    ranked = rank_candidates(timeline, fitted.cost, fitted.contention, k, exclude=(baseline,))
    if stored is not None and not any(r.plan.same_buckets(stored) for r in ranked) \
            and _ddp_can_form(stored, timeline):
        again = BucketPlan(stored.buckets, "stored")
        ranked = ranked[: max(0, k - 1)]
        ranked.append(RankedPlan(again, simulate(timeline, again, fitted.cost, fitted.contention)))
    return Candidates(timeline, fitted, baseline, tuple(ranked))


def with_compressed_candidate(found: Candidates, dtype: str, k: int) -> Candidates:
    """``found`` with its last place (of ``k``) given to the compressed plan, when
    there is one worth measuring (module docstring)."""
    if k < 2 or found.cost.cast is None:
        return found
    plan = compressed_plan(found.timeline, found.cost, found.contention, dtype, f"optimal+{dtype}")
    if plan is None or not _ddp_can_form(plan, found.timeline):
        return found
    squeezed = RankedPlan(plan, found.simulate(plan))
    return replace(found, ranked=(*found.ranked[: k - 1], squeezed))


def rank_candidates(
    timeline: ReadyTimeline, cost: AllreduceCostModel, contention: Contention, k: int,
    max_buckets: int | None = None, exclude: tuple[BucketPlan, ...] = (),
) -> list[RankedPlan]:
    """``k`` distinct plans to measure (step 3 of the module docstring; near-ties
    diversified by :func:`_diverse`).  Plans grouping gradients like one in
    ``exclude``, and plans DDP cannot form, are skipped."""
    searches = [(contention, max_buckets, "optimal"), (Contention(), max_buckets, "optimal-no-contention")]
    searches += [(contention, limit, f"optimal-max{limit}") for limit in (2, 4, 8)
                 if max_buckets is None or limit < max_buckets]
    pool = []
    for model, limit, label in searches:
        try:
            pool.append(optimal_plan(timeline, cost, model, limit, label))
        except PlanError:  # no dtype-homogeneous partition within the limit
            continue
    pool.extend(p for p in peer_plans(timeline, cost, contention)
                if max_buckets is None or len(p.buckets) <= max_buckets)
    ranked: list[RankedPlan] = []
    for plan in pool:
        if any(plan.same_buckets(q.plan) for q in ranked) or any(plan.same_buckets(e) for e in exclude):
            continue
        if not _ddp_can_form(plan, timeline):
            continue
        ranked.append(RankedPlan(plan, simulate(timeline, plan, cost, contention)))
    ranked.sort(key=lambda r: r.sim.step_s)
    return _diverse(ranked, k)


def _ddp_can_form(plan: BucketPlan, timeline: ReadyTimeline) -> bool:
    """Whether ``bucket_cap_mb_list`` can make DDP form ``plan`` from the timeline's
    gradients (with several gradient dtypes some partitions cannot be expressed)."""
    try:
        plan.ddp_caps_mb(timeline.layout)
    except PlanNotExpressible:
        return False
    return True


def _diverse(ranked: list[RankedPlan], k: int) -> list[RankedPlan]:
    """The best plan first; then, among the remaining plans predicted within
    ``TIE`` (2%) of the best remaining one, the one whose bucket count is farthest
    (in log scale) from those already chosen: near-ties are decided by measurement,
    so measuring different shapes hedges against model error."""
    chosen, rest = ranked[:1], ranked[1:]
    while rest and len(chosen) < k:
        limit = rest[0].sim.step_s * (1 + TIE)
        near = [r for r in rest if r.sim.step_s <= limit]
        pick = max(near, key=lambda r: min(abs(math.log(len(r.plan.buckets)) - math.log(len(c.plan.buckets)))
                                           for c in chosen))
        chosen.append(pick)
        rest.remove(pick)
    return chosen
