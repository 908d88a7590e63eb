"""What one training step records: when each gradient was ready and each bucket's allreduce ran.

Time model.  Every time in a :class:`StepRecord` is in seconds since that step's
start on that rank, the start being the entry of the DDP forward that begins a
synchronised step.  Ranks are aligned at step start because the previous step
ended with a collective that every rank left at about the same moment.

A step is one of two kinds (:data:`STEP_KINDS`):

* ``"compute"``: no communication ran during backward (``no_sync()``, or gdat's
  deferring comm hook that launches every allreduce after backward ends).  Its
  gradient-ready times are the pure compute timeline.
* ``"overlap"``: stock DDP behaviour, allreduce overlapped with backward.

:class:`RankTimeline` holds one rank's recorded steps; a
:class:`gdat.core.profile.Profile` gathers every rank's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gdat.core.jsonio import require
from gdat.errors import ProfileError

__all__ = ["BucketSpan", "StepRecord", "RankTimeline", "STEP_KINDS"]

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
