"""A profiling session on a live DDP model: recorder + tracing comm hook + gather.

The session owns one :class:`StepRecorder` and one :class:`BucketTracer` installed as
DDP's comm hook.  Before each step the caller says its kind:

* ``"compute"``: the tracer defers every allreduce to the end of backward, so the
  gradient-ready times are those of backward alone, and the step still averages
  gradients exactly like stock DDP (no training step is lost);
* ``"overlap"``: the tracer launches each bucket at once, as stock DDP does.

:func:`profile_ddp` is the convenience for Python users: it measures the
allreduce ladder, then runs ``step_fn`` for the requested compute and overlap steps
and returns the gathered :class:`Profile` (on every rank).  With
``compute_mode="no_sync"`` the compute steps run under ``ddp.no_sync()`` instead:
no communication at all, but those steps' gradients are not averaged.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist

from gdat.core.cost_model import AllreduceCostModel
from gdat.core.device import Clock, device_type_of
from gdat.core.profile import Profile
from gdat.core.timeline import StepRecord
from gdat.errors import UsageError
from gdat.profiling.allreduce_bench import fit_from_ladder, measure_allreduce
from gdat.profiling.comm_trace import BucketTracer, tracing_allreduce_hook
from gdat.profiling.gather import gather_profile, local_profile
from gdat.profiling.recorder import StepRecorder
from gdat.reducer.ddp_model import WeakAttribute, bucket_order_of, param_infos, process_group_of
from gdat.reducer.torch_internals import remove_comm_hook

__all__ = ["ProfileSession", "profile_ddp"]


class ProfileSession:
    """Record steps of ``ddp``; :meth:`finish` gathers them into a :class:`Profile`."""

    ddp = WeakAttribute()

    def __init__(self, ddp: torch.nn.Module, clock: Clock | None = None) -> None:
        self.ddp = ddp
        self.device_type = device_type_of(ddp.module)
        self.clock = clock or Clock(self.device_type)
        self.group = process_group_of(ddp)
        self.params = param_infos(ddp)
        self.rank, self.world_size = dist.get_rank(self.group), dist.get_world_size(self.group)
        self.backend = str(dist.get_backend(self.group))
        self.bucket_order = bucket_order_of(ddp)
        self.recorder = StepRecorder(ddp, self.clock).attach()
        self.tracer = BucketTracer(self.clock, self.recorder.param_index, self.group, mode="off",
                                   on_bucket=self.recorder.add_bucket)
        ddp.register_comm_hook(self.tracer, tracing_allreduce_hook)

    def set_kind(self, kind: str) -> None:
        """Kind of the steps that start from now on (``compute`` or ``overlap``)."""
        if kind not in ("compute", "overlap"):
            raise ValueError(f"unknown step kind {kind!r}")
        self.recorder.default_kind = kind
        self.tracer.set_mode("deferred" if kind == "compute" else "overlap")

    def begin_step(self, kind: str) -> None:
        """Start a step of ``kind`` now (call at the entry of DDP's forward)."""
        self.set_kind(kind)
        self.recorder.start_step(kind)

    def end_forward(self, output: Any) -> None:
        self.recorder.end_forward(output)

    def finish(self, cost_model: AllreduceCostModel | None = None, meta: dict[str, Any] | None = None) -> Profile:
        """Stop recording and gather (a collective).  The tracer stays on this reducer,
        averaging untraced, but is forgotten as a registered hook: a reducer rebuilt
        by :func:`gdat.reducer.plan_switch.switch_buckets` does not get it back."""
        steps = self.stop()
        remove_comm_hook(self.ddp, tracing_allreduce_hook, self.tracer)
        return gather_profile(steps, self.params, self.device_type, self.group, cost_model, meta,
                              self.bucket_order)

    def stop(self) -> list[StepRecord]:
        """Stop recording: every recorded step; the hooks removed, the tracer off
        (it averages untraced)."""
        steps = self.recorder.finish()
        self.recorder.detach()
        self.tracer.set_mode("off")
        return steps

    def partial(self, cost_model: AllreduceCostModel | None = None, meta: dict[str, Any] | None = None) -> Profile:
        """This rank's steps so far as a one-rank :class:`Profile`, with no
        collective and no DDP needed (for a script that ended early, its DDP
        possibly gone): the hooks are removed, the tracer averages untraced."""
        steps = self.stop()
        return local_profile(steps, self.params, self.device_type, self.rank, self.world_size, self.backend,
                             cost_model, meta, self.bucket_order)


def profile_ddp(
    ddp: torch.nn.Module,
    step_fn: Callable[[], Any],
    compute_steps: int = 3,
    overlap_steps: int = 3,
    comm_budget_s: float = 2.0,
    compute_mode: str = "deferred",
    meta: dict[str, Any] | None = None,
) -> Profile:
    """Profile ``ddp`` by running ``step_fn()`` (one whole training step) repeatedly.

    Call it after DDP's first two iterations (buckets are rebuilt in ready order at
    the second).  Registers gdat's tracing comm hook on ``ddp``: a DDP accepts one
    comm hook in its life, so use a DDP without one.  A collective: every rank calls it.
    """
    if compute_steps < 0 or overlap_steps < 0 or compute_steps + overlap_steps == 0:
        raise UsageError("profile needs a non-negative number of compute and overlap steps, not both 0")
    if compute_mode not in ("deferred", "no_sync"):
        raise UsageError(f"compute_mode must be 'deferred' or 'no_sync', got {compute_mode!r}")
    cost = fit_from_ladder(measure_allreduce(comm_budget_s, process_group_of(ddp)))
    session = ProfileSession(ddp)
    session.recorder.hook_forward()
    session.set_kind("compute")
    for _ in range(compute_steps):
        if compute_mode == "no_sync":
            with ddp.no_sync():
                step_fn()
        else:
            step_fn()
    session.set_kind("overlap")
    for _ in range(overlap_steps):
        step_fn()
    return session.finish(cost, meta)
