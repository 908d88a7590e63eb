"""Gradient-ready timelines: what profiling records and the schedule consumes.

Time model.  Every time in a :class:`StepRecord` is in seconds since that step's
start on that rank, the start being the entry of the DDP forward that begins a
synchronised step.  Ranks are aligned at step start because the previous step
ended with a collective that every rank left at about the same moment.

A step is one of two kinds:

* ``"compute"``: no communication ran during backward (``no_sync()``, or gdat's
  deferring comm hook that launches every allreduce after backward ends).  Its
  gradient-ready times are the pure compute timeline.
* ``"overlap"``: stock DDP behaviour, allreduce overlapped with backward.

:meth:`Profile.ready_timeline` reduces the recorded steps to the schedule's input,
a :class:`ReadyTimeline`: for each parameter in DDP's ready order, the median over
steps of its ready time on each rank, then the maximum over ranks (an allreduce
cannot start before every rank has the gradient), then a running maximum along the
ready order (DDP launches buckets in order, so a gradient is only useful once all
gradients before it are ready).

A profile of a DDP that never rebuilds its buckets (``find_unused_parameters=True``,
``Profile.bucket_order == "fixed"``, see :mod:`gdat.layout`) is reduced the same
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
from typing import Any, Iterable

from gdat.errors import ProfileError
from gdat.cost_model import AllreduceCostModel
from gdat.jsonio import check_document, read_document, require, write_document
from gdat.layout import BUCKET_ORDERS, FIXED_ORDER, READY_ORDER, GradientLayout, ParamInfo

__all__ = [
    "BucketSpan",
    "StepRecord",
    "RankTimeline",
    "Profile",
    "ReadyTimeline",
    "PROFILE_SCHEMA",
    "PROFILE_VERSION",
]

PROFILE_SCHEMA = "gdat.profile"
PROFILE_VERSION = 1
STEP_KINDS = ("compute", "overlap")


def _num(d: dict, key: str, where: str, optional: bool = False) -> float | None:
    if optional and d.get(key) is None:
        return None
    return float(require(d, key, (int, float), ProfileError, where))


@dataclass(frozen=True)
class BucketSpan:
    """One bucket allreduce as launched by DDP: launch and completion, seconds since
    step start; ``nbytes`` is the bucket buffer's size."""

    index: int
    param_indices: tuple[int, ...]
    nbytes: int
    launch_s: float
    end_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "params": list(self.param_indices), "nbytes": self.nbytes,
                "launch_s": self.launch_s, "end_s": self.end_s}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "BucketSpan":
        if not isinstance(d, dict):
            raise ProfileError(f"{where}: expected an object")
        params = require(d, "params", list, ProfileError, where)
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in params):
            raise ProfileError(f"{where}: field 'params' must hold integers")
        return cls(
            index=require(d, "index", int, ProfileError, where),
            param_indices=tuple(params),
            nbytes=require(d, "nbytes", int, ProfileError, where),
            launch_s=_num(d, "launch_s", where),
            end_s=_num(d, "end_s", where),
        )


@dataclass(frozen=True)
class StepRecord:
    """What one rank did in one training step (seconds since the step's start).

    ``grad_ready`` lists ``(param_index, seconds)`` in the order gradients were
    accumulated.  ``backward_end_s`` is when the autograd engine finished backward
    compute (before DDP waits for its allreduces).  Optimizer times are ``None``
    when no optimizer stepped; ``step_end_s`` is the next step's start (``None`` for
    the last step recorded).  ``start_s`` is the step's start on the rank's own clock
    (perf_counter seconds), used only to lay steps out on a trace.
    ``module_forward_end_s`` is when the wrapped module's own forward returned
    (recorded for a ``find_unused_parameters`` DDP only): what follows until
    ``forward_end_s`` is DDP's post-forward, its search of the autograd graph.
    """

    step: int
    kind: str
    start_s: float
    forward_end_s: float
    backward_start_s: float
    backward_end_s: float
    grad_ready: tuple[tuple[int, float], ...]
    buckets: tuple[BucketSpan, ...] = ()
    optimizer_start_s: float | None = None
    optimizer_end_s: float | None = None
    step_end_s: float | None = None
    module_forward_end_s: float | None = None

    @property
    def comm_end_s(self) -> float | None:
        """Completion of the last bucket allreduce, if any were traced."""
        return max((b.end_s for b in self.buckets), default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "kind": self.kind, "start_s": self.start_s, "forward_end_s": self.forward_end_s,
            "backward_start_s": self.backward_start_s, "backward_end_s": self.backward_end_s,
            "grad_ready": [[i, t] for i, t in self.grad_ready],
            "buckets": [b.to_dict() for b in self.buckets],
            "optimizer_start_s": self.optimizer_start_s, "optimizer_end_s": self.optimizer_end_s,
            "step_end_s": self.step_end_s, "module_forward_end_s": self.module_forward_end_s,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "StepRecord":
        if not isinstance(d, dict):
            raise ProfileError(f"{where}: expected an object")
        ready = require(d, "grad_ready", list, ProfileError, where)
        pairs = []
        for k, item in enumerate(ready):
            if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], int)
                    or isinstance(item[0], bool) or not isinstance(item[1], (int, float))
                    or isinstance(item[1], bool)):
                raise ProfileError(f"{where}: grad_ready[{k}] must be [param_index, seconds]")
            pairs.append((item[0], float(item[1])))
        buckets = require(d, "buckets", list, ProfileError, where)
        return cls(
            step=require(d, "step", int, ProfileError, where),
            kind=require(d, "kind", str, ProfileError, where, lambda v: v in STEP_KINDS),
            start_s=_num(d, "start_s", where),
            forward_end_s=_num(d, "forward_end_s", where),
            backward_start_s=_num(d, "backward_start_s", where),
            backward_end_s=_num(d, "backward_end_s", where),
            grad_ready=tuple(pairs),
            buckets=tuple(BucketSpan.from_dict(b, f"{where}.buckets[{k}]")
                          for k, b in enumerate(buckets)),
            optimizer_start_s=_num(d, "optimizer_start_s", where, optional=True),
            optimizer_end_s=_num(d, "optimizer_end_s", where, optional=True),
            step_end_s=_num(d, "step_end_s", where, optional=True),
            module_forward_end_s=_num(d, "module_forward_end_s", where, optional=True),
        )


@dataclass(frozen=True)
class RankTimeline:
    """All recorded steps of one rank."""

    rank: int
    host: str
    steps: tuple[StepRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "host": self.host, "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "RankTimeline":
        if not isinstance(d, dict):
            raise ProfileError(f"{where}: expected an object")
        steps = require(d, "steps", list, ProfileError, where)
        return cls(
            rank=require(d, "rank", int, ProfileError, where, lambda v: v >= 0),
            host=require(d, "host", str, ProfileError, where),
            steps=tuple(StepRecord.from_dict(s, f"{where}.steps[{k}]") for k, s in enumerate(steps)),
        )


@dataclass(frozen=True)
class ReadyTimeline:
    """The schedule's input: the compute timeline of one step, all ranks combined.

    ``layout`` lists the gradients in DDP's ready order.  ``ready_s[j]`` is the time
    (seconds since step start) from which gradient ``layout.order[j]`` and all
    before it are ready on every rank; it is non-decreasing.  ``backward_end_s`` is
    when backward compute ends; ``post_s`` is the rest of the step after both
    backward and communication end (DDP's copy-back, optimizer, data loading).  A
    plan whose last allreduce ends at ``c`` predicts a step of
    ``max(backward_end_s, c) + post_s`` seconds.
    """

    layout: GradientLayout
    ready_s: tuple[float, ...]
    backward_start_s: float
    backward_end_s: float
    post_s: float

    def __post_init__(self) -> None:
        if len(self.ready_s) != len(self.layout):
            raise ProfileError("ready timeline: ready_s and the gradient layout differ in length")
        if any(b > a for a, b in zip(self.ready_s[1:], self.ready_s)):
            raise ProfileError("ready timeline: ready times must be non-decreasing")


def _median(values: Iterable[float]) -> float:
    vals = list(values)
    return statistics.median(vals) if vals else 0.0


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
        for steps in per_rank:
            times = [dict(s.grad_ready) for s in steps]
            for j, p in enumerate(order):
                ready[j] = max(ready[j], _median(t.get(p, s.backward_start_s) for t, s in zip(times, steps)))
            bwd_start = max(bwd_start, _median(s.backward_start_s for s in steps))
            bwd_end = max(bwd_end, _median(s.backward_end_s for s in steps))
            tails = [s.step_end_s - max(s.backward_end_s, s.comm_end_s or 0.0)
                     for s in steps if s.step_end_s is not None]
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

    def save(self, path: str) -> None:
        """Write the profile as a versioned JSON document (atomically)."""
        write_document(path, PROFILE_SCHEMA, PROFILE_VERSION, self.to_dict())

    @classmethod
    def load(cls, path: str) -> "Profile":
        """Read a profile written by :meth:`save`; raises :class:`ProfileError`."""
        return cls.from_dict(read_document(path, PROFILE_SCHEMA, PROFILE_VERSION, ProfileError), path)

