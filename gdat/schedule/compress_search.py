"""Which buckets to compress, chosen jointly with the split (``--gdat-compress``).

Family.  Plans whose compressed buckets form a suffix: gradients ``0 .. s-1`` are
bucketed exactly, gradients ``s .. n-1`` in buckets allreduced in the reduced dtype
(float32 buckets only; a bucket of another dtype in the suffix stays exact).  The
suffix is where communication is exposed: the last gradients become ready last
and their allreduces end the step, so the tail is what compression can shorten.
``s = n`` is the exact optimum of :mod:`gdat.schedule.search`.

Recurrence (notation of :mod:`gdat.schedule.search`; ``c`` exact, ``c~`` compressed
work, :meth:`gdat.core.cost_model.AllreduceCostModel.compressed_times_s`).  ``f(j)`` is
the exact table; for each suffix start ``s``

    F(s, s) = f(s),   F(s, j) = min_{s <= i < j} g(max(R_j, F(s, i)), c~(S_j - S_i))

``g`` is non-decreasing in its start and work-conserving, so, as for the exact
table, the earliest end of each prefix is what every continuation wants and
``F(s, n)`` is the earliest communication end of any plan with a cut at ``s`` and
the buckets after it compressed, exactly under the model.  All ``s`` are solved
together, one column ``j`` at a time: ``O(n^3)`` time, ``O(n^2)`` memory.

Choice.  Step ``T(s)``: the simulated step of that plan
(:func:`gdat.schedule.simulator.simulate`, with DDP's finalize copies, which the
tables above leave out: they minimise the communication end).  Among the suffix starts whose
step is within ``SLACK`` (1%, the tuner's noise floor, :data:`gdat.decide.verdict.FLOOR`)
of the best ``T``, the one compressing the fewest bytes (the largest ``s``) is
returned: compression buys time only where it is exposed, and a gain below the
floor could not be confirmed on real steps anyway.  ``None`` when that choice
compresses nothing.  What it optimises: the shortest predicted step over the
suffix family, then the fewest compressed bytes; it does not consider compressing
a bucket that is followed by an exact one.
"""
from __future__ import annotations

import numpy as np

from gdat.core.cost_model import AllreduceCostModel, Contention
from gdat.core.plan import BucketPlan
from gdat.core.profile import ReadyTimeline
from gdat.errors import PlanError
from gdat.schedule.search import allowed_cuts, earliest_ends
from gdat.schedule.simulator import comm_end, simulate, stretched

__all__ = ["compressed_plan", "suffix_ends", "SLACK"]

SLACK = 0.01


def suffix_ends(timeline: ReadyTimeline, cost: AllreduceCostModel, contention: Contention = Contention()
                ) -> tuple[np.ndarray, list[list[int]], list[list[int]]]:
    """``(F(., n), exact_ends, suffix_ends)``: for every suffix start ``s`` the
    earliest communication end (``inf`` where no plan cuts at ``s``), and the
    bucket end positions of that plan's exact prefix and compressed suffix."""
    n = len(timeline.layout)
    if n == 0:
        raise PlanError("the model has no gradients to bucket")
    ready, bwd_end = stretched(timeline, contention.compute_stretch)
    kappa = contention.comm_slowdown
    nbytes = np.asarray(timeline.layout.nbytes, dtype=np.float64)
    prefix = np.concatenate([[0.0], np.cumsum(nbytes)])
    ok, first = allowed_cuts(timeline)
    ready_at = np.concatenate([[0.0], ready])
    f, parent = earliest_ends(cost, ready_at, bwd_end, kappa, prefix, ok, first)
    compressible = np.array([d == "float32" for d in timeline.layout.dtypes] + [False])
    table = np.full((n + 1, n + 1), np.inf)
    starts = np.nonzero(ok & np.isfinite(np.where(np.arange(n + 1) == 0, 0.0, f)))[0]
    table[starts, starts] = f[starts]
    back = np.zeros((n + 1, n + 1), dtype=np.int64)
    for j in range(1, n + 1):
        if not ok[j]:
            continue
        i = np.arange(first[j], j)
        span = prefix[j] - prefix[i]
        work = np.where(compressible[i], cost.compressed_times_s(span), cost.times_s(span))
        prev = table[:j, i]
        ends = comm_end(np.maximum(ready_at[j], prev), np.broadcast_to(work, prev.shape), bwd_end, kappa)
        ends = np.where(prev < np.inf, ends, np.inf)
        best = np.argmin(ends, axis=1)
        table[:j, j] = ends[np.arange(j), best]
        back[:j, j] = i[best]
    final = np.where(np.arange(n + 1) < n, table[:, n], f[n])
    exact_ends, suffix = [], []
    for s in range(n + 1):
        tail, j = [], n
        while s < n and np.isfinite(final[s]) and j > s:
            tail.append(j)
            j = int(back[s, j])
        head, j = [], s
        while np.isfinite(final[s]) and j > 0:
            head.append(j)
            j = int(parent[j])
        exact_ends.append(head[::-1])
        suffix.append(tail[::-1])
    return final, exact_ends, suffix


def compressed_plan(timeline: ReadyTimeline, cost: AllreduceCostModel, contention: Contention, dtype: str,
                    label: str = "optimal+compress") -> BucketPlan | None:
    """The plan of the module docstring's choice, or ``None`` (compression buys
    less than ``SLACK``); needs ``cost.cast``."""
    final, head, tail = suffix_ends(timeline, cost, contention)
    plans = {s: _suffix_plan(timeline, head[s], tail[s], dtype, label)
             for s in range(len(final)) if np.isfinite(final[s])}
    if not plans:
        raise PlanError("no bucket partition DDP can express exists for this model")
    step = {s: simulate(timeline, plan, cost, contention).step_s for s, plan in plans.items()}
    best = min(step.values())
    s = max(k for k in step if step[k] <= best * (1 + SLACK))
    return None if s == len(timeline.layout) else plans[s]


def _suffix_plan(timeline: ReadyTimeline, head: list[int], tail: list[int], dtype: str, label: str) -> BucketPlan:
    """The plan cutting at ``head + tail``, its buckets after ``head`` compressed (float32 ones)."""
    plan = BucketPlan.from_ends(timeline.layout, head + tail, label)
    return plan.with_compression(
        [k for k in range(len(head), len(plan.buckets)) if plan.buckets[k].dtype == "float32"], dtype, label)
