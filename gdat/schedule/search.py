"""The optimal contiguous bucket partition under the simulator's model.

Let ``S_j`` be the bytes of the first ``j`` gradients (ready order), ``R_j`` the
(stretched) ready time of gradient ``j-1``, ``c`` the allreduce cost and ``g`` the
communication-end function of :mod:`gdat.schedule.simulator`.  A plan is a
sequence of cut points ``0 = i_0 < i_1 < ... < i_K = n``; bucket ``k`` holds
gradients ``i_{k-1} .. i_k - 1``.  Its allreduce ends at
``e_k = g(max(R_{i_k}, e_{k-1}), c(S_{i_k} - S_{i_{k-1}}))``.

Since ``g`` is non-decreasing in its start, the earliest end of a prefix is what
every continuation wants (the principle of optimality), so

    f(0) = -inf,   f(j) = min_{i < j} g(max(R_j, f(i)), c(S_j - S_i))

gives the earliest possible end of communication ``f(n)``, hence the shortest step
``max(T'_b, f(n)) + post``, exactly, in ``O(n^2)`` time.  With at most ``K``
buckets the table gains a bucket-count index: ``f_k(j) = min_i g(max(R_j,
f_{k-1}(i)), ...)``, ``O(K n^2)``.

DDP's finalize (:mod:`gdat.schedule.simulator`, ``gamma`` seconds per byte of
copy-back) makes the step ``gamma S + max(T'_b, M) + post`` with ``M = max_k (e_k -
gamma P_{i_{k-1}})``: a bucket's copy is exposed when it ends late.  The earliest
end of a prefix is no longer all a continuation needs, but it is for the question
"is ``M <= X``?": with every bucket's end capped at ``X + gamma P_i`` (``P_i`` the
bytes before it; a bucket over its cap is not allowed) the same table is earliest
ends of the prefixes that keep the cap, and ``X`` is feasible when ``f(n)`` is
finite.  Feasibility is monotone in ``X``, so bisection between the
``gamma = 0`` optimum's ``M`` (feasible) and ``f(n) - gamma S`` (a bound below any
plan's ``M``) to 1 ns finds the shortest step, ``O(n^2 log)``; when ``gamma = 0``
the plain table is exact as it stands.

Cuts DDP cannot express are excluded: a bucket may not mix dtypes, and may not end
in a zero-byte gradient unless it is the last (DDP closes a bucket when its size
reaches the cap, so a trailing empty gradient would open the next bucket).  For a
model with one gradient dtype every remaining partition is exactly expressible
with ``bucket_cap_mb_list``.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from gdat.core.cost_model import AllreduceCostModel, Contention
from gdat.core.plan import BucketPlan
from gdat.core.profile import ReadyTimeline
from gdat.errors import PlanError
from gdat.schedule.simulator import comm_end, simulate, stretched

__all__ = ["optimal_plan", "allowed_cuts", "earliest_ends"]


def allowed_cuts(timeline: ReadyTimeline) -> tuple[np.ndarray, np.ndarray]:
    """``(ok, first)``: ``ok[j]`` whether a bucket may end after gradient ``j-1``
    (``j = 0..n``); ``first[j]`` the smallest ``i`` such that gradients ``i..j-1``
    share one dtype (a bucket ending at ``j`` starts at ``i >= first[j]``)."""
    n = len(timeline.layout)
    ok = np.ones(n + 1, dtype=bool)
    nbytes = np.asarray(timeline.layout.nbytes)
    ok[1:n] = nbytes[: n - 1] > 0
    first = np.zeros(n + 1, dtype=np.int64)
    start = 0
    for j in range(1, n + 1):
        if j > 1 and timeline.layout.dtypes[j - 1] != timeline.layout.dtypes[j - 2]:
            start = j - 1
        first[j] = start
    return ok, first


def earliest_ends(cost: AllreduceCostModel, ready_at: np.ndarray, bwd_end: float, kappa: float,
                  prefix: np.ndarray, ok: np.ndarray, first: np.ndarray,
                  cap: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The unbounded DP: ``f[j]`` the earliest end (seconds) of the allreduce of the
    last bucket when gradients ``0..j-1`` are bucketed optimally, ``f[j] = min_i
    end(max(ready_at[j], f[i]), t(prefix[j] - prefix[i]))`` over allowed ``i``
    (``f[0] = -inf``; ``inf`` where no partition cuts at ``j``), and ``parent[j]``
    the minimising ``i``; with ``cap``, a bucket starting at gradient ``i`` may end
    no later than ``cap[i]`` seconds."""
    n = len(prefix) - 1
    f = np.full(n + 1, np.inf)
    f[0] = -np.inf
    parent = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        if not ok[j]:
            continue
        i = np.arange(first[j], j)
        ends = comm_end(np.maximum(ready_at[j], f[i]), cost.times_s(prefix[j] - prefix[i]), bwd_end, kappa)
        ends = np.where(f[i] < np.inf, ends, np.inf)
        if cap is not None:
            ends = np.where(ends <= cap[i], ends, np.inf)
        best = int(np.argmin(ends))
        f[j], parent[j] = ends[best], i[best]
    return f, parent


def _backtrack(parent: list[np.ndarray] | np.ndarray, n: int, layered: bool, k_best: int) -> list[int]:
    ends, j, k = [], n, k_best
    while j > 0:
        ends.append(j)
        j = int(parent[k][j]) if layered else int(parent[j])
        k -= 1
    return ends[::-1]


def optimal_plan(
    timeline: ReadyTimeline, cost: AllreduceCostModel, contention: Contention = Contention(),
    max_buckets: int | None = None, label: str = "optimal",
) -> BucketPlan:
    """The plan of the shortest step under the model (see above)."""
    n = len(timeline.layout)
    if n == 0:
        raise PlanError("the model has no gradients to bucket")
    if max_buckets is not None and max_buckets < 1:
        raise PlanError("max_buckets must be at least 1")
    ready, bwd_end = stretched(timeline, contention.compute_stretch)
    prefix = np.concatenate([[0.0], np.cumsum(np.asarray(timeline.layout.nbytes, dtype=np.float64))])
    ok, first = allowed_cuts(timeline)
    table = _Table(cost, np.concatenate([[0.0], ready]), bwd_end, contention.comm_slowdown, prefix, ok, first,
                   max_buckets)
    found = table.solve(None)
    if found is None:
        raise PlanError("no bucket partition DDP can express exists for this model" if max_buckets is None
                        else "no bucket partition DDP can express exists within the bucket limit")
    final, ends = found
    gamma = timeline.copy_s_per_byte
    if gamma > 0:
        one_at_a_time = replace(timeline, allreduce_slots=1)

        def exposure(cuts: list[int]) -> float:
            """``max(T'_b, M)`` of the plan cutting at ``cuts``: its simulated step less
            ``gamma S + post`` (the simulator's ``F_K``, one allreduce at a time)."""
            sim = simulate(one_at_a_time, BucketPlan.from_ends(timeline.layout, cuts), cost, contention)
            return sim.step_s - timeline.post_s - gamma * prefix[n]

        lo, hi = max(bwd_end, final - gamma * prefix[n]), exposure(ends)
        while hi - lo > _TOLERANCE_S:
            mid = (lo + hi) / 2
            better = table.solve(mid + gamma * prefix)
            if better is None:
                lo = mid
            else:
                hi, ends = exposure(better[1]), better[1]
    return BucketPlan.from_ends(timeline.layout, ends, label)


_TOLERANCE_S = 1e-9


class _Table:
    """The DP of the module docstring over one timeline, with or without a bucket limit."""

    def __init__(self, cost: AllreduceCostModel, ready_at: np.ndarray, bwd_end: float, kappa: float,
                 prefix: np.ndarray, ok: np.ndarray, first: np.ndarray, max_buckets: int | None) -> None:
        self.cost, self.ready_at, self.bwd_end, self.kappa = cost, ready_at, bwd_end, kappa
        self.prefix, self.ok, self.first, self.max_buckets = prefix, ok, first, max_buckets
        if max_buckets is not None:
            n = len(prefix) - 1
            i_idx = np.arange(n + 1)[:, None]
            j_idx = np.arange(n + 1)[None, :]
            self.invalid = ~((i_idx < j_idx) & (i_idx >= first[None, :]) & ok[None, :])
            self.work = cost.times_s(np.maximum(prefix[None, :] - prefix[:, None], 0.0))
            self.work[self.invalid] = 0.0

    def solve(self, cap: np.ndarray | None) -> tuple[float, list[int]] | None:
        """The earliest communication end and the cuts of a plan reaching it, every
        bucket starting at gradient ``i`` ending by ``cap[i]``; ``None`` if none can."""
        n = len(self.prefix) - 1
        if self.max_buckets is None:
            f, parent = earliest_ends(self.cost, self.ready_at, self.bwd_end, self.kappa, self.prefix, self.ok,
                                      self.first, cap)
            return (float(f[n]), _backtrack(parent, n, False, 0)) if np.isfinite(f[n]) else None
        layers, parents = [np.full(n + 1, np.inf)], []
        layers[0][0] = -np.inf
        for _ in range(min(self.max_buckets, n)):
            prev = layers[-1]
            rows = np.nonzero(prev < np.inf)[0]
            if rows.size == 0:
                break
            ends = comm_end(np.maximum(self.ready_at[None, :], prev[rows, None]), self.work[rows], self.bwd_end,
                            self.kappa)
            ends[self.invalid[rows]] = np.inf
            if cap is not None:
                ends[ends > cap[rows, None]] = np.inf
            best = np.argmin(ends, axis=0)
            parents.append(rows[best])
            layers.append(ends[best, np.arange(n + 1)])
        finals = [layer[n] for layer in layers[1:]]
        k_best = int(np.argmin(finals))
        if not np.isfinite(finals[k_best]):
            return None
        return float(finals[k_best]), _backtrack(parents, n, True, k_best)
