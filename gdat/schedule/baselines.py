"""The plans peers can express, simulated beside gdat's own.

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

:func:`peer_plans` lists them all; :mod:`gdat.schedule.candidates` ranks them with
the optima when the tuner generates its candidates.
"""
from __future__ import annotations

from gdat.core.cost_model import AllreduceCostModel, Contention
from gdat.core.plan import MIB, BucketPlan, plan_from_caps
from gdat.core.profile import ReadyTimeline
from gdat.errors import PlanError
from gdat.schedule.simulator import comm_end, stretched

__all__ = [
    "uniform_plan",
    "uniform_plans",
    "horovod_plan",
    "mgwfbp_plan",
    "peer_plans",
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
    return plan_from_caps(timeline.layout, caps, label)


def uniform_plans(timeline: ReadyTimeline, caps_mib: tuple[float, ...] = UNIFORM_CAPS_MIB) -> list[BucketPlan]:
    """Uniform-cap plans, with and without the 1 MiB first bucket."""
    return [uniform_plan(timeline, c, first) for c in caps_mib for first in (False, True)]


def horovod_plan(timeline: ReadyTimeline, threshold_bytes: int, cycle_s: float) -> BucketPlan:
    """Horovod-style tensor fusion (module docstring)."""
    if threshold_bytes <= 0 or cycle_s <= 0:
        raise PlanError("fusion threshold and cycle time must be positive")
    t0 = timeline.ready_s[0] if timeline.ready_s else 0.0
    layout = timeline.layout
    ends, size, cycle = [], 0, None
    for j, (r, nb) in enumerate(zip(timeline.ready_s, layout.nbytes)):
        tick = int((r - t0) // cycle_s)
        dtype_change = j > 0 and layout.dtypes[j] != layout.dtypes[j - 1]
        if j > 0 and (tick != cycle or size + nb > threshold_bytes or dtype_change):
            ends.append(j)
            size = 0
        size += nb
        cycle = tick
    ends.append(len(layout))
    label = f"horovod-{threshold_bytes / MIB:g}MiB-{cycle_s * 1e3:g}ms"
    return BucketPlan.from_ends(layout, ends, label)


def mgwfbp_plan(timeline: ReadyTimeline, cost: AllreduceCostModel,
                contention: Contention = Contention()) -> BucketPlan:
    """MG-WFBP-style greedy merge (module docstring), under the same model."""
    ready, bwd_end = stretched(timeline, contention.compute_stretch)
    kappa = contention.comm_slowdown
    alpha = cost.alpha_s
    layout = timeline.layout
    n, nbytes, dtypes = len(layout), layout.nbytes, layout.dtypes
    ends: list[int] = []
    prev_end = -float("inf")
    size = nbytes[0]
    for j in range(1, n + 1):
        start = max(ready[j - 1], prev_end)
        can_join = j < n and dtypes[j] == dtypes[j - 1] and nbytes[j - 1] > 0
        if can_join and (ready[j] <= start or ready[j] - start < alpha):
            size += nbytes[j]
            continue
        ends.append(j)
        prev_end = comm_end(start, cost.time_s(size), bwd_end, kappa)
        if j < n:
            size = nbytes[j]
    return BucketPlan.from_ends(layout, ends, "mg-wfbp")


def peer_plans(timeline: ReadyTimeline, cost: AllreduceCostModel,
               contention: Contention = Contention()) -> list[BucketPlan]:
    """Every peer plan gdat compares against."""
    plans = uniform_plans(timeline)
    for mib in (16, 64, 128):
        for cycle in (1e-3, 5e-3):
            plans.append(horovod_plan(timeline, mib * MIB, cycle))
    plans.append(mgwfbp_plan(timeline, cost, contention))
    return plans
