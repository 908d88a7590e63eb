"""The plans peers can express, and the ranked candidates the tuner measures.

* DDP uniform caps: ``bucket_cap_mb = c`` for a ladder of ``c``; with the default
  1 MiB first bucket (``[1 MiB, c]``, what DDP does when the user leaves the cap at
  its default) and without it.
* Horovod-style fusion: every ``cycle`` seconds the gradients that became ready
  since the last cycle are fused into buffers of at most ``threshold`` bytes
  (a gradient larger than the threshold goes alone).
* MG-WFBP-style greedy merge: walking gradients in ready order, the next gradient
  joins the open bucket when the open bucket could not start before it is ready
  anyway, or when waiting for it costs less than the start-up ``alpha`` a separate
  allreduce would pay; otherwise the open bucket closes.

:func:`rank_candidates` simulates every plan and returns ``k`` distinct ones, the
best predicted first: the tuner measures those on real steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from gdat.cost_model import AllreduceCostModel, Contention
from gdat.errors import PlanError, PlanNotExpressible
from gdat.plan import MIB, BucketPlan, plan_from_caps
from gdat.schedule.search import optimal_plan
from gdat.schedule.simulator import Simulation, comm_end, simulate, stretched
from gdat.timeline import ReadyTimeline

__all__ = [
    "uniform_plan",
    "uniform_plans",
    "horovod_plan",
    "mgwfbp_plan",
    "peer_plans",
    "RankedPlan",
    "rank_candidates",
    "UNIFORM_CAPS_MIB",
]

UNIFORM_CAPS_MIB = (1, 2, 4, 8, 16, 25, 50, 100)
DDP_FIRST_BUCKET_MIB = 1


def uniform_plan(timeline: ReadyTimeline, cap_mib: float, first_bucket: bool) -> BucketPlan:
    """What stock DDP forms with ``bucket_cap_mb=cap_mib`` (``first_bucket``: the
    1 MiB first bucket DDP adds when the cap is left at its default)."""
    caps = [int(cap_mib * MIB)]
    if first_bucket:
        caps = [DDP_FIRST_BUCKET_MIB * MIB, caps[0]]
    label = f"ddp-{cap_mib:g}MiB" + ("+1MiB-first" if first_bucket else "")
    return plan_from_caps(timeline.order, timeline.nbytes, timeline.dtypes, caps, label)


def uniform_plans(timeline: ReadyTimeline, caps_mib: tuple[float, ...] = UNIFORM_CAPS_MIB) -> list[BucketPlan]:
    """Uniform-cap plans, with and without the 1 MiB first bucket."""
    return [uniform_plan(timeline, c, first) for c in caps_mib for first in (False, True)]


def horovod_plan(timeline: ReadyTimeline, threshold_bytes: int, cycle_s: float) -> BucketPlan:
    """Horovod-style tensor fusion (module docstring)."""
    if threshold_bytes <= 0 or cycle_s <= 0:
        raise PlanError("fusion threshold and cycle time must be positive")
    t0 = timeline.ready_s[0] if timeline.ready_s else 0.0
    ends, size, cycle = [], 0, None
    for j, (r, nb) in enumerate(zip(timeline.ready_s, timeline.nbytes)):
        tick = int((r - t0) // cycle_s)
        dtype_change = j > 0 and timeline.dtypes[j] != timeline.dtypes[j - 1]
        if j > 0 and (tick != cycle or size + nb > threshold_bytes or dtype_change):
            ends.append(j)
            size = 0
        size += nb
        cycle = tick
    ends.append(len(timeline.order))
    label = f"horovod-{threshold_bytes / MIB:g}MiB-{cycle_s * 1e3:g}ms"
    return BucketPlan.from_ends(timeline.order, timeline.nbytes, timeline.dtypes, ends, label)


def mgwfbp_plan(timeline: ReadyTimeline, cost: AllreduceCostModel,
                contention: Contention = Contention()) -> BucketPlan:
    """MG-WFBP-style greedy merge (module docstring), under the same model."""
    ready, bwd_end = stretched(timeline, contention.compute_stretch)
    kappa = contention.comm_slowdown
    alpha = cost.alpha_s
    ends: list[int] = []
    prev_end = -float("inf")
    size = timeline.nbytes[0]
    for j in range(1, len(timeline.order) + 1):
        start = max(ready[j - 1], prev_end)
        can_join = j < len(timeline.order) and timeline.dtypes[j] == timeline.dtypes[j - 1] \
            and timeline.nbytes[j - 1] > 0
        if can_join and (ready[j] <= start or ready[j] - start < alpha):
            size += timeline.nbytes[j]
            continue
        ends.append(j)
        prev_end = comm_end(start, cost.time_s(size), bwd_end, kappa)
        if j < len(timeline.order):
            size = timeline.nbytes[j]
    return BucketPlan.from_ends(timeline.order, timeline.nbytes, timeline.dtypes, ends, "mg-wfbp")


def peer_plans(timeline: ReadyTimeline, cost: AllreduceCostModel,
               contention: Contention = Contention()) -> list[BucketPlan]:
    """Every peer plan gdat compares against."""
    plans = uniform_plans(timeline)
    for mib in (16, 64, 128):
        for cycle in (1e-3, 5e-3):
            plans.append(horovod_plan(timeline, mib * MIB, cycle))
    plans.append(mgwfbp_plan(timeline, cost, contention))
    return plans


@dataclass(frozen=True)
class RankedPlan:
    """A plan with its simulated step."""

    plan: BucketPlan
    sim: Simulation


def rank_candidates(
    timeline: ReadyTimeline, cost: AllreduceCostModel, contention: Contention, k: int,
    max_buckets: int | None = None, exclude: tuple[BucketPlan, ...] = (),
) -> list[RankedPlan]:
    """``k`` distinct plans to measure: the best under the model first, near-ties
    diversified (see :func:`_diverse`).

    The pool: the optimum (and the optimum under the contention-free model, a hedge
    against calibration error), optima with at most 2, 4 and 8 buckets, and every
    peer plan.  Plans grouping gradients like one in ``exclude``, and plans DDP
    cannot form, are skipped.
    """
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


TIE = 0.02


def _ddp_can_form(plan: BucketPlan, timeline: ReadyTimeline) -> bool:
    """Whether ``bucket_cap_mb_list`` can make DDP form ``plan`` (with several
    gradient dtypes some partitions cannot be expressed)."""
    try:
        plan.ddp_caps_mb(timeline.order, timeline.nbytes, timeline.dtypes)
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
