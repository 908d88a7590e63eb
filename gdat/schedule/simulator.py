"""Predict a step's time under a bucket plan, and the best any plan could do.

Model (all times in seconds since step start, sizes in bytes).

* Compute.  The compute-only timeline gives ``r_j``, the time from which gradient
  ``j`` (ready order) and all before it are ready on every rank, and ``T_b``, the
  end of backward compute.  Overlapped communication stretches backward by the
  contention factor ``sigma >= 1`` from its start ``t_0``:
  ``r'_j = t_0 + sigma (r_j - t_0)``, ``T'_b = t_0 + sigma (T_b - t_0)``.
* Buckets.  Bucket ``k`` is ready at ``R_k``, the latest ``r'`` of its gradients
  and of every earlier bucket's (``r`` is a running maximum along the layout's
  order, :class:`~gdat.core.profile.ReadyTimeline`; under DDP's fixed bucket order of
  ``find_unused_parameters=True`` that order is reverse registration order, not
  the ready order, so a bucket waits for its latest member, not its last one).
  Allreduces run one at a time on the link, in bucket order (DDP launches bucket
  ``k`` only after ``k-1``): ``start_k = max(R_k, end_{k-1})``.
* Communication.  A bucket of ``B`` bytes needs ``W = t(B)`` seconds of link work
  (the :class:`AllreduceCostModel`), or ``t(B/2) + cast(B)`` when the plan
  compresses it (:meth:`AllreduceCostModel.compressed_times_s`).  Work progresses at rate ``1/kappa`` while
  backward compute runs (``t < T'_b``) and at rate 1 afterwards, so
  ``end = g(start, W)`` with
  ``g(s, W) = s + W`` if ``s >= T'_b``;
  ``s + kappa W`` if ``s + kappa W <= T'_b``;
  ``T'_b + W - (T'_b - s) / kappa`` otherwise.
  With ``-inf`` for "no earlier allreduce", ``g`` is only ever given finite starts.
* Shared link.  A backend that runs ``m`` allreduces at once (``allreduce_slots``
  of the timeline: gloo's two worker threads) starts bucket ``k`` when it is ready
  and fewer than ``m`` earlier buckets are unfinished; the running allreduces share
  the link's rate equally.  Either way the link works whenever a ready bucket is
  unfinished, at the same rate, so the last allreduce ends at the same time as one
  at a time (the search's ``f(n)`` stays exact); what changes is which bucket ends
  last: a large bucket still running when the last one starts ends with it, or
  after it, and its copy-back (below) is then not hidden.
* Finalize.  When backward ends DDP waits for each bucket's allreduce in bucket
  order and copies its result back into the gradients, ``gamma`` seconds per byte
  (:class:`~gdat.core.profile.ReadyTimeline`, fitted to the profile):
  ``F_0 = T'_b``, ``F_k = max(F_{k-1}, end_k) + gamma B_k``; unrolled,
  ``F_K = gamma S + max(T'_b, max_k (end_k - gamma P_k))`` with ``S`` the bytes of
  all gradients and ``P_k`` those of the buckets before ``k``.  A large last bucket
  leaves its whole copy after communication; the copies of buckets that end early
  are hidden behind the later allreduces.
* Step.  ``step = F_K + post`` (``max(T'_b, end_K) + post`` when ``gamma = 0``);
  exposed communication is ``max(0, end_K - T'_b)``.

``g`` is non-decreasing in ``s`` and ``W`` and work-conserving
(``g(g(s, W1), W2) = g(s, W1 + W2)``), which makes the search's dynamic
programme exact and gives the lower bound:

    LB = max(T'_b + gamma S, max_j g(r'_j, alpha_lo + beta_lo * S_j) + gamma b_n) + post

where ``S_j`` is the total size of gradients ``j..n``, ``b_n`` the size of the
last gradient (every plan's last bucket holds it) and ``alpha_lo + beta_lo n``
is a line below the cost model (:meth:`AllreduceCostModel.lower_line`).  Every
bucket holding gradient ``j`` or a later one starts no earlier than ``r'_j`` and
the link must still carry ``S_j`` bytes and at least one start-up latency, so no
plan ends communication earlier; the last bucket's copy follows its end, and
every copy follows backward.  This is the one lower bound every
path uses: the tuner's report and every table of ``gdat simulate``.

Calibration (:func:`calibrate`).  The allreduce cost is first rescaled to what the
profile's compute-only steps measured in situ (see :func:`calibrate`).  ``sigma`` is
the ratio of backward
compute duration measured with overlapped communication to that of the
compute-only profile.  ``kappa`` is then the value (found by bisection, since the
predicted communication end grows with ``kappa``) at which the simulator replays
the measured overlapped run's plan with its measured communication end, searched
in [1, ``MAX_SLOWDOWN`` = 3].  When even ``kappa = 3`` cannot explain the measured
end, the measured plan overlaps too little for ``kappa`` to be identified (the
discrepancy is noise or comes from elsewhere) and ``kappa`` stays 1 rather than
chasing it.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from gdat.core.cost_model import AllreduceCostModel, Contention
from gdat.core.layout import FIXED_ORDER
from gdat.core.plan import Bucket, BucketPlan
from gdat.core.profile import Profile, ReadyTimeline, finalize_end_s
from gdat.errors import PlanError, ProfileError

MAX_SLOWDOWN = 3.0

__all__ = ["Simulation", "simulate", "bucket_work_s", "lower_bound_s", "comm_end", "stretched", "calibrate",
           "Calibration", "recalibrated",
           "measured_plan"]


@dataclass(frozen=True)
class Simulation:
    """A plan's predicted step (seconds since step start)."""

    start_s: tuple[float, ...]
    end_s: tuple[float, ...]
    backward_end_s: float
    comm_end_s: float
    step_s: float

    @property
    def exposed_comm_s(self) -> float:
        return max(0.0, self.comm_end_s - self.backward_end_s)


def comm_end(start_s: np.ndarray | float, work_s: np.ndarray | float, backward_end_s: float,
             kappa: float) -> np.ndarray | float:
    """``g(start, W)`` of the module docstring (vectorised).

    Equivalently ``g = s + W + (kappa - 1) * min(W, max(T'_b - s, 0) / kappa)``: the
    work done before backward ends, ``min(W, (T'_b - s)/kappa)``, takes ``kappa``
    times as long.
    """
    scalar = np.ndim(start_s) == 0 and np.ndim(work_s) == 0
    start = np.atleast_1d(np.asarray(start_s, dtype=np.float64))
    work = np.atleast_1d(np.asarray(work_s, dtype=np.float64))
    slow = np.maximum(backward_end_s - start, 0.0)
    slow /= kappa
    slow = np.minimum(slow, work, out=slow if slow.shape == np.broadcast_shapes(slow.shape, work.shape) else None)
    slow *= kappa - 1.0
    slow += start
    slow += work
    return float(slow[0]) if scalar else slow


def stretched(timeline: ReadyTimeline, sigma: float) -> tuple[np.ndarray, float]:
    """``(r', T'_b)``: ready times and backward end stretched by ``sigma``."""
    t0 = timeline.backward_start_s
    ready = t0 + sigma * (np.asarray(timeline.ready_s, dtype=np.float64) - t0)
    return np.maximum(ready, 0.0), t0 + sigma * (timeline.backward_end_s - t0)


def _bucket_ready(timeline: ReadyTimeline, ready: np.ndarray, plan: BucketPlan) -> list[float]:
    pos = {p: j for j, p in enumerate(timeline.layout.order)}
    out, latest = [], 0.0
    for k, b in enumerate(plan.buckets):
        try:
            latest = max(latest, max(ready[pos[p]] for p in b.params))
        except KeyError as e:
            raise PlanError(f"plan bucket {k} names parameter {e.args[0]}, absent from the profile") from None
        out.append(latest)
    return out


def bucket_work_s(cost: AllreduceCostModel, bucket: Bucket) -> float:
    """Seconds of link work of ``bucket``'s allreduce (compressed or exact)."""
    return cost.compressed_times_s(bucket.nbytes) if bucket.compress else cost.time_s(bucket.nbytes)


def simulate(
    timeline: ReadyTimeline, plan: BucketPlan, cost: AllreduceCostModel,
    contention: Contention = Contention(),
) -> Simulation:
    """Predict ``plan``'s step under the model of the module docstring."""
    ready, bwd_end = stretched(timeline, contention.compute_stretch)
    launch = _bucket_ready(timeline, ready, plan)
    work = [bucket_work_s(cost, b) for b in plan.buckets]
    if timeline.allreduce_slots > 1:
        starts, ends = _shared_link(launch, work, bwd_end, contention.comm_slowdown, timeline.allreduce_slots)
    else:
        starts, ends, prev_end = [], [], -np.inf
        for r, w in zip(launch, work):
            s = max(r, prev_end)
            prev_end = comm_end(s, w, bwd_end, contention.comm_slowdown)
            starts.append(float(s))
            ends.append(float(prev_end))
    final = finalize_end_s(bwd_end, ends, [b.nbytes for b in plan.buckets], timeline.copy_s_per_byte)
    return Simulation(tuple(starts), tuple(ends), bwd_end, max(ends), final + timeline.post_s)


def _shared_link(launch: Sequence[float], work: Sequence[float], bwd_end: float, kappa: float,
                 slots: int) -> tuple[list[float], list[float]]:
    """Starts and ends (seconds) of allreduces launched at ``launch`` (non-decreasing)
    needing ``work`` seconds of link each, at most ``slots`` at once sharing the
    link equally, the link's rate ``1/kappa`` before ``bwd_end`` and 1 after
    (module docstring, "Shared link")."""
    n = len(work)
    starts, ends = [0.0] * n, [0.0] * n
    left: dict[int, float] = {}
    nxt, t = 0, launch[0] if n else 0.0
    while nxt < n or left:
        while nxt < n and len(left) < slots and launch[nxt] <= t:
            starts[nxt], left[nxt] = t, work[nxt]
            nxt += 1
        if not left:
            t = launch[nxt]
            continue
        rate = (1.0 / kappa if t < bwd_end else 1.0) / len(left)
        first = min(left, key=left.__getitem__)
        step = left[first] / rate
        if nxt < n and len(left) < slots:
            step = min(step, launch[nxt] - t)
        if t < bwd_end:
            step = min(step, bwd_end - t)
        completes = step == left[first] / rate
        for k in left:
            left[k] -= rate * step
        t += step
        if completes:
            left[first] = 0.0
        for k in [k for k, w in left.items() if w <= 0.0]:
            ends[k] = t
            del left[k]
    return starts, ends


def lower_bound_s(timeline: ReadyTimeline, cost: AllreduceCostModel,
                  contention: Contention = Contention()) -> float:
    """The shortest step any plan can have under the model (module docstring)."""
    ready, bwd_end = stretched(timeline, contention.compute_stretch)
    suffix = np.cumsum(np.asarray(timeline.layout.nbytes, dtype=np.float64)[::-1])[::-1]
    alpha, beta = cost.lower_line()
    ends = comm_end(ready, alpha + beta * suffix, bwd_end, contention.comm_slowdown)
    gamma = timeline.copy_s_per_byte
    return max(bwd_end + gamma * float(suffix[0]), float(np.max(ends)) + gamma * float(timeline.layout.nbytes[-1])) \
        + timeline.post_s


def measured_plan(profile: Profile) -> BucketPlan:
    """The plan the profile's overlapped steps ran (rank 0's last traced step)."""
    steps = [s for s in profile.ranks[0].steps if s.kind == "overlap" and s.buckets]
    if not steps:
        raise ProfileError("the profile has no traced overlapped step")
    size = {p.index: p.nbytes for p in profile.params}
    kind = {p.index: p.dtype for p in profile.params}
    spans = sorted(steps[-1].buckets, key=lambda b: b.index)
    groups = [b.param_indices for b in spans]
    if profile.bucket_order == FIXED_ORDER:  # DDP lists them by index; the layout, backwards
        groups = [tuple(sorted(g, reverse=True)) for g in groups]
    try:
        return BucketPlan(tuple(Bucket(g, sum(size[i] for i in g), kind[g[0]]) for g in groups),
                          "user configuration")
    except (PlanError, KeyError, IndexError) as e:
        raise ProfileError(f"overlapped steps' buckets do not form a plan: {e}") from None


@dataclass(frozen=True)
class Calibration:
    """The model fitted to a profile: the allreduce cost as it ran inside training
    (``comm_scale`` times the microbenchmark's) and the contention factors."""

    cost: AllreduceCostModel
    contention: Contention
    comm_scale: float


def _median_max(profile: Profile, kind: str, value) -> float | None:
    """Median over a rank's traced steps of ``kind`` of ``value(step)``, max over ranks."""
    per_rank = [[value(s) for s in r.steps if s.kind == kind and s.buckets] for r in profile.ranks]
    per_rank = [v for v in per_rank if v]
    return max(statistics.median(v) for v in per_rank) if per_rank else None


def calibrate(profile: Profile, cost: AllreduceCostModel) -> Calibration:
    """Fit the model to the profile (module docstring).

    ``comm_scale``: in compute-only steps every bucket is launched when backward
    ends and the allreduces run back to back with nothing else running, so their
    span, last completion minus first launch, should be the sum of their predicted
    times; the median ratio (clamped to [0.5, 2]) rescales the microbenchmark's cost
    model to the allreduces DDP really runs.  Then ``sigma`` and ``kappa`` as above,
    on the rescaled model.
    """
    compute = profile.ready_timeline("compute")
    ratios = [(max(b.end_s for b in s.buckets) - min(b.launch_s for b in s.buckets))
              / sum(cost.time_s(b.nbytes) for b in s.buckets)
              for r in profile.ranks for s in r.steps if s.kind == "compute" and s.buckets]
    scale = min(2.0, max(0.5, statistics.median(ratios))) if ratios else 1.0
    cost = cost.scaled(scale, f"{cost.source} x {scale:.3f} (in-situ)") if ratios else cost
    measured_bwd = _median_max(profile, "overlap", lambda s: s.backward_end_s - s.backward_start_s)
    if measured_bwd is None:
        return Calibration(cost, Contention(), scale)
    base = compute.backward_end_s - compute.backward_start_s
    sigma = max(1.0, measured_bwd / base) if base > 0 else 1.0
    target = _median_max(profile, "overlap", lambda s: s.comm_end_s)
    plan = measured_plan(profile)
    lo, hi = 1.0, MAX_SLOWDOWN
    if simulate(compute, plan, cost, Contention(sigma, lo)).comm_end_s >= target:
        return Calibration(cost, Contention(sigma, 1.0), scale)
    if simulate(compute, plan, cost, Contention(sigma, hi)).comm_end_s < target:
        return Calibration(cost, Contention(sigma, 1.0), scale)
    for _ in range(40):
        mid = (lo + hi) / 2
        if simulate(compute, plan, cost, Contention(sigma, mid)).comm_end_s < target:
            lo = mid
        else:
            hi = mid
    return Calibration(cost, Contention(sigma, hi), scale)


def recalibrated(calibration: Calibration, cost: AllreduceCostModel) -> Calibration:
    """``calibration`` carried to a link measured again (``cost``, its
    microbenchmark fit): the in-situ scale and the contention factors are the
    machine's, kept; only the link's cost changes."""
    return Calibration(cost.scaled(calibration.comm_scale, f"{cost.source} x {calibration.comm_scale:.3f} (in-situ, "
                                                            f"kept)"), calibration.contention, calibration.comm_scale)

