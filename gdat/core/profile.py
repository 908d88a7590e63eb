"""A profile: every rank's recorded steps, reduced to what the schedule consumes.

Steps are :class:`gdat.core.timeline.StepRecord` (times in seconds since step
start on that rank).  :meth:`Profile.ready_timeline` reduces the recorded steps to
the schedule's input, a :class:`ReadyTimeline`: for each parameter in DDP's ready order, the median over
steps of its ready time on each rank, then the maximum over ranks (an allreduce
cannot start before every rank has the gradient), then a running maximum along the
ready order (DDP launches buckets in order, so a gradient is only useful once all
gradients before it are ready).

A profile of a DDP that never rebuilds its buckets (``find_unused_parameters=True``,
``Profile.bucket_order == "fixed"``, see :mod:`gdat.core.layout`) is reduced the same
way along DDP's fixed bucket order (reverse registration order) instead of the
ready order, so ``ready_s[j]`` is the latest ready time of gradients ``0..j`` of
that order: a bucket is ready when its latest member is, and not before the
buckets ahead of it.  A parameter a step did not use has no ready time in that
step; DDP marks it ready when the step's first gradient hook fires, so it counts
as ready at that step's backward start.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from gdat.core.cost_model import AllreduceCostModel
from gdat.core.jsonio import check_document, read_document, require, write_document
from gdat.core.layout import BUCKET_ORDERS, FIXED_ORDER, READY_ORDER, GradientLayout, ParamInfo
from gdat.core.timeline import STEP_KINDS, RankTimeline, StepRecord
from gdat.errors import ProfileError

__all__ = ["Profile", "ReadyTimeline", "finalize_end_s", "fitted_copy_s_per_byte", "ALLREDUCE_SLOTS", "PROFILE_SCHEMA",
           "PROFILE_VERSION"]

#: Allreduces a backend runs at once: gloo hands a process group's collectives to 2
#: worker threads (ProcessGroupGloo's default), which share the link; NCCL and HCCL
#: run them one after another on one stream (1, for any backend not listed).
ALLREDUCE_SLOTS = {"gloo": 2}

PROFILE_SCHEMA = "gdat.profile"
PROFILE_VERSION = 1


@dataclass(frozen=True)
class ReadyTimeline:
    """The schedule's input: the compute timeline of one step, all ranks combined.

    ``layout`` lists the gradients in DDP's ready order.  ``ready_s[j]`` is the time
    (seconds since step start) from which gradient ``layout.order[j]`` and all
    before it are ready on every rank; it is non-decreasing.  ``backward_end_s`` is
    when backward compute ends.  ``copy_s_per_byte`` (``gamma``, seconds per byte)
    is DDP's finalize: when backward ends, DDP waits for each bucket's allreduce in
    bucket order and copies its result back into the gradients, so with bucket ``k``
    of ``B_k`` bytes ending at ``e_k`` the copies end at ``F_K``,

        F_0 = backward_end_s,   F_k = max(F_{k-1}, e_k) + gamma B_k,

    and the copy of the last bucket (of any bucket ending late) is not hidden behind
    communication.  ``allreduce_slots`` is how many allreduces the backend runs at
    once, sharing the link (:data:`ALLREDUCE_SLOTS`).  ``post_s`` is the rest of the
    step after that (optimizer, data loading, forward of the next step).  A plan
    predicts a step of ``F_K + post_s`` seconds (``max(backward_end_s, e_K) +
    post_s`` when ``gamma = 0``).
    """

    layout: GradientLayout
    ready_s: tuple[float, ...]
    backward_start_s: float
    backward_end_s: float
    post_s: float
    copy_s_per_byte: float = 0.0
    allreduce_slots: int = 1

    def __post_init__(self) -> None:
        if len(self.ready_s) != len(self.layout):
            raise ProfileError("ready timeline: ready_s and the gradient layout differ in length")
        if any(b > a for a, b in zip(self.ready_s[1:], self.ready_s)):
            raise ProfileError("ready timeline: ready times must be non-decreasing")


def _median(values: Iterable[float]) -> float:
    vals = list(values)
    return statistics.median(vals) if vals else 0.0


def finalize_end_s(backward_end_s: float, ends_s: Sequence[float], nbytes: Sequence[float],
                   copy_s_per_byte: float) -> float:
    """``F_K`` of :class:`ReadyTimeline` (seconds): DDP's copies of the buckets'
    results into the gradients, in bucket order, each after its allreduce ends."""
    f = backward_end_s
    for e, b in zip(ends_s, nbytes):
        f = max(f, e) + copy_s_per_byte * b
    return f


def _step_finalize_s(step: StepRecord, copy_s_per_byte: float) -> float:
    """``F_K`` of one recorded step, from its traced buckets (bucket order)."""
    spans = sorted(step.buckets, key=lambda b: b.index)
    return finalize_end_s(step.backward_end_s, [b.end_s for b in spans], [b.nbytes for b in spans],
                          copy_s_per_byte)


_TIE = 1e-6
_COPY_GRID = (0.0, *(1e-12 * 10 ** (k / 20) for k in range(81)))  # 0, then 1 ps/B .. 10 ns/B


def fitted_copy_s_per_byte(steps: Sequence[StepRecord]) -> float:
    """``gamma`` of :class:`ReadyTimeline` fitted to recorded steps, seconds per byte.

    In a traced step the optimizer starts ``G = c + F_K(gamma) - max(backward end,
    last allreduce end)`` after communication, where ``c >= 0`` is whatever the
    script does in between (the same every step: a loss read, gradient clipping).
    The compute-only profile steps run every allreduce after backward and the
    overlapped ones during it, so they leave different bytes to copy at the end and
    tell ``gamma`` from ``c``.  Fit: the value of a grid (0, then 1 ps/B to 10 ns/B,
    20 per decade) of least absolute deviation, ``c`` the median residual (at least
    0).  Where steps cannot tell the two apart (every step leaves the same bytes to
    copy: the fit is the same over a range of ``gamma``), the smallest ``c`` wins:
    DDP copies every bucket back whatever else the script does then, so the gap is
    taken as copy unless the steps show otherwise.  Steps without a traced bucket or
    optimizer are not used; with fewer than two, 0.
    """
    usable = [s for s in steps if s.buckets and s.optimizer_start_s is not None]
    if len(usable) < 2:
        return 0.0
    base = [max(s.backward_end_s, s.comm_end_s or 0.0) for s in usable]
    gaps = [s.optimizer_start_s - b for s, b in zip(usable, base)]  # type: ignore[operator]
    fits = []
    for gamma in _COPY_GRID:
        resid = [g - (_step_finalize_s(s, gamma) - b) for s, g, b in zip(usable, gaps, base)]
        c = max(0.0, statistics.median(resid))
        fits.append((sum(abs(r - c) for r in resid), c, gamma))
    least = min(err for err, _, _ in fits)
    return min((c, gamma) for err, c, gamma in fits if err <= least * (1 + _TIE) + 1e-12)[1]


@dataclass(frozen=True)
class Profile:
    """A gathered profile: every rank's timeline plus what it was measured on."""

    world_size: int
    backend: str
    device_type: str
    torch_version: str
    params: tuple[ParamInfo, ...]
    ranks: tuple[RankTimeline, ...]
    cost_model: AllreduceCostModel | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    bucket_order: str = READY_ORDER

    def steps_of(self, kind: str) -> list[list[StepRecord]]:
        """Per rank, the steps of ``kind`` that recorded every parameter (under the
        ``"fixed"`` order: every step, unused parameters being DDP's to mark)."""
        n = len(self.params)
        fixed = self.bucket_order == FIXED_ORDER
        return [[s for s in r.steps if s.kind == kind and (fixed or len(s.grad_ready) == n)] for r in self.ranks]

    def steps_with_unused(self) -> int:
        """How many recorded steps (all ranks) left some parameter without a gradient."""
        n = len(self.params)
        return sum(len({i for i, _ in s.grad_ready}) < n for r in self.ranks for s in r.steps)

    def ready_order(self) -> tuple[int, ...]:
        """The order buckets are filled in: under ``"fixed"``, reverse DDP index
        order; else DDP's ready order, rank 0's order in its first complete step
        (DDP broadcasts rank 0's order when it rebuilds buckets)."""
        if self.bucket_order == FIXED_ORDER:
            return tuple(p.index for p in reversed(self.params))
        for kind in STEP_KINDS:
            steps = self.steps_of(kind)
            if steps and steps[0]:
                return tuple(i for i, _ in steps[0][0].grad_ready)
        raise ProfileError("profile has no complete step on rank 0")

    def ready_timeline(self, kind: str = "compute") -> ReadyTimeline:
        """Reduce the steps of ``kind`` to the schedule's :class:`ReadyTimeline`."""
        per_rank = self.steps_of(kind)
        if not per_rank or any(not steps for steps in per_rank):
            raise ProfileError(f"profile has no complete {kind!r} step on some rank")
        order = self.ready_order()
        ready = [0.0] * len(order)
        bwd_start = bwd_end = post = 0.0
        gamma = fitted_copy_s_per_byte([s for r in self.ranks for s in r.steps])
        for steps in per_rank:
            times = [dict(s.grad_ready) for s in steps]
            for j, p in enumerate(order):
                ready[j] = max(ready[j], _median(t.get(p, s.backward_start_s) for t, s in zip(times, steps)))
            bwd_start = max(bwd_start, _median(s.backward_start_s for s in steps))
            bwd_end = max(bwd_end, _median(s.backward_end_s for s in steps))
            tails = [s.step_end_s - _step_finalize_s(s, gamma) for s in steps if s.step_end_s is not None]
            post = max(post, _median(tails))
        running = 0.0
        for j, t in enumerate(ready):
            running = max(running, t)
            ready[j] = running
        return ReadyTimeline(
            layout=GradientLayout.of(self.params, order, self.bucket_order),
            ready_s=tuple(ready),
            backward_start_s=bwd_start,
            backward_end_s=max(bwd_end, running),
            post_s=post,
            copy_s_per_byte=gamma,
            allreduce_slots=ALLREDUCE_SLOTS.get(self.backend, 1),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size, "backend": self.backend, "device_type": self.device_type,
            "torch_version": self.torch_version, "params": [p.to_dict() for p in self.params],
            "ranks": [r.to_dict() for r in self.ranks],
            "cost_model": self.cost_model.to_dict() if self.cost_model else None,
            "meta": self.meta, "bucket_order": self.bucket_order,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "profile") -> "Profile":
        d = check_document(d, PROFILE_SCHEMA, PROFILE_VERSION, ProfileError, where)
        params = require(d, "params", list, ProfileError, where)
        ranks = require(d, "ranks", list, ProfileError, where)
        cost = d.get("cost_model")
        meta = d.get("meta", {})
        if not isinstance(meta, dict):
            raise ProfileError(f"{where}: field 'meta' must be an object")
        profile = cls(
            world_size=require(d, "world_size", int, ProfileError, where, lambda v: v >= 1),
            backend=require(d, "backend", str, ProfileError, where),
            device_type=require(d, "device_type", str, ProfileError, where),
            torch_version=require(d, "torch_version", str, ProfileError, where),
            params=tuple(ParamInfo.from_dict(p, f"{where}.params[{k}]") for k, p in enumerate(params)),
            ranks=tuple(RankTimeline.from_dict(r, f"{where}.ranks[{k}]") for k, r in enumerate(ranks)),
            cost_model=None if cost is None else AllreduceCostModel.from_dict(cost, f"{where}.cost_model"),
            meta=meta,
            bucket_order=d.get("bucket_order", READY_ORDER),
        )
        if profile.bucket_order not in BUCKET_ORDERS:
            raise ProfileError(f"{where}: unknown bucket_order {profile.bucket_order!r}")
        known = {p.index for p in profile.params}
        for r in profile.ranks:
            for s in r.steps:
                for i, _ in s.grad_ready:
                    if i not in known:
                        raise ProfileError(f"{where}: rank {r.rank} step {s.step} names unknown parameter {i}")
        return profile

    def to_document(self) -> dict[str, Any]:
        """The profile as a versioned document (what :meth:`save` writes, :meth:`from_dict` reads)."""
        return {"schema": PROFILE_SCHEMA, "version": PROFILE_VERSION, **self.to_dict()}

    def save(self, path: str) -> None:
        """Write the profile as a versioned JSON document (atomically)."""
        write_document(path, PROFILE_SCHEMA, PROFILE_VERSION, self.to_dict())

    @classmethod
    def load(cls, path: str) -> "Profile":
        """Read a profile written by :meth:`save`; raises :class:`ProfileError`."""
        return cls.from_dict(read_document(path, PROFILE_SCHEMA, PROFILE_VERSION, ProfileError), path)

