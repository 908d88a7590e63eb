"""Record one rank's training steps of a DDP model as :class:`StepRecord` s.

What is timed, and how (all marks from the device seam's :class:`Clock`):

* step start: the entry of DDP's forward (a forward pre-hook on the DDP module);
* forward end: DDP's forward returns (a forward hook); for a DDP with
  ``find_unused_parameters=True`` also the wrapped module's forward end (a
  forward hook on it), before DDP's post-forward searches the autograd graph;
* backward start: the first gradient w.r.t. any of DDP's outputs is computed (a
  tensor hook on each output that requires grad);
* gradient ready: ``register_post_accumulate_grad_hook`` on every parameter DDP
  reduces, i.e. the moment the gradient is accumulated into ``.grad`` and handed
  to DDP, in the order it happens;
* backward end: the autograd engine's final callback, queued at backward start (it
  runs before DDP's own final callback waits for the allreduces);
* optimizer: the global optimizer step pre- and post-hooks;
* buckets: from a :class:`~gdat.profiling.comm_trace.BucketTracer`, when one is
  installed as DDP's comm hook;
* step end: the next step's start.

A recorder costs one clock mark and one list append per gradient while attached;
:meth:`detach` removes every hook.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from gdat.core.device import Clock
from gdat.core.layout import FIXED_ORDER
from gdat.core.timeline import BucketSpan, StepRecord
from gdat.profiling.comm_trace import TracedBucket
from gdat.reducer.ddp_model import WeakAttribute, bucket_order_of, reducer_parameters
from gdat.reducer.torch_internals import output_tensors, queue_backward_callback

__all__ = ["StepRecorder"]


@dataclass
class _Marks:
    step: int
    kind: str
    start: Any
    forward_end: Any = None
    module_forward_end: Any = None
    backward_start: Any = None
    backward_end: Any = None
    ready: list[tuple[int, Any]] = field(default_factory=list)
    buckets: list[TracedBucket] = field(default_factory=list)
    optimizer_start: Any = None
    optimizer_end: Any = None
    end: Any = None


class StepRecorder:
    """Records steps of ``ddp`` on this rank.

    Drive it either with :meth:`hook_forward` (module hooks on a stock DDP: every
    forward with grad enabled starts a step, ``"compute"`` under ``no_sync()``) or
    by calling :meth:`start_step` / :meth:`end_forward` yourself.
    """

    ddp = WeakAttribute()

    def __init__(self, ddp: torch.nn.Module, clock: Clock) -> None:
        self.ddp = ddp
        self.clock = clock
        self.named_params = reducer_parameters(ddp)
        self.param_index = {id(p): i for i, (_, p) in enumerate(self.named_params)}
        self._open: _Marks | None = None
        self._done: list[_Marks] = []
        self._handles: list[Any] = []
        self._attached = False
        self.next_step = 0
        self.default_kind = "overlap"

    # --- hooks ---------------------------------------------------------------
    def attach(self) -> "StepRecorder":
        """Install the gradient and optimizer hooks."""
        if self._attached:
            return self
        for i, (_, p) in enumerate(self.named_params):
            self._handles.append(p.register_post_accumulate_grad_hook(
                lambda _p, i=i: self._on_ready(i)))
        if bucket_order_of(self.ddp) == FIXED_ORDER:
            self._handles.append(self.ddp.module.register_forward_hook(self._on_module_forward_post))
        self._handles.append(register_optimizer_step_pre_hook(self._on_optimizer_pre))
        self._handles.append(register_optimizer_step_post_hook(self._on_optimizer_post))
        self._attached = True
        return self

    def hook_forward(self) -> "StepRecorder":
        """Also start steps from DDP's forward (for a stock DDP instance)."""
        self._handles.append(self.ddp.register_forward_pre_hook(self._on_forward_pre))
        self._handles.append(self.ddp.register_forward_hook(self._on_forward_post))
        return self

    def detach(self) -> None:
        """Remove every hook; the open step stays open until :meth:`finish`."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._attached = False

    def _on_forward_pre(self, module: torch.nn.Module, args: Any) -> None:
        if torch.is_grad_enabled():
            kind = self.default_kind if getattr(module, "require_backward_grad_sync", True) else "compute"
            self.start_step(kind)

    def _on_forward_post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if torch.is_grad_enabled():
            self.end_forward(output)

    def _on_module_forward_post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._open is not None and self._open.forward_end is None and torch.is_grad_enabled():
            self._open.module_forward_end = self.clock.mark()

    def _on_ready(self, index: int) -> None:
        # after the step's backward has ended, gradients belong to later no_sync
        # micro-steps, outside any synchronised step
        if self._open is not None and self._open.backward_end is None:
            self._open.ready.append((index, self.clock.mark()))

    def _on_optimizer_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._open is not None and self._open.optimizer_start is None:
            self._open.optimizer_start = self.clock.mark()

    def _on_optimizer_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._open is not None:
            self._open.optimizer_end = self.clock.mark()

    def _on_backward_start(self, marks: _Marks) -> None:
        if marks.backward_start is not None:
            return
        marks.backward_start = self.clock.mark()
        marks.ready.clear()  # gradients of earlier no_sync micro-steps belong to no synchronised step

        def engine_done() -> None:
            marks.backward_end = self.clock.mark()

        queue_backward_callback(engine_done)

    # --- driving -------------------------------------------------------------
    def start_step(self, kind: str | None = None) -> None:
        """Close the open step (its end is now) and open step ``next_step``."""
        now = self.clock.mark()
        if self._open is not None:
            self._open.end = now
            self._done.append(self._open)
        self._open = _Marks(self.next_step, kind or self.default_kind, now)
        self.next_step += 1

    def end_forward(self, output: Any) -> None:
        """Mark the forward's end and watch ``output`` for the start of backward."""
        marks = self._open
        if marks is None:
            return
        marks.forward_end = self.clock.mark()
        for t in output_tensors(output):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.register_hook(lambda grad, m=marks: self._on_backward_start(m))

    def add_bucket(self, traced: TracedBucket) -> None:
        """Attach a completed traced bucket to the open step (tracer callback)."""
        if self._open is not None:
            self._open.buckets.append(traced)

    def finish(self) -> list[StepRecord]:
        """Close the open step without an end and return every recorded step."""
        if self._open is not None:
            self._done.append(self._open)
            self._open = None
        steps, self._done = self._done, []
        return [self._resolve(m) for m in steps if m.forward_end is not None and m.ready]

    def _resolve(self, m: _Marks) -> StepRecord:
        optional = [m.forward_end, m.backward_start, m.backward_end, m.optimizer_start, m.optimizer_end, m.end,
                    m.module_forward_end]
        marks = [m.start, *(x for x in optional if x is not None), *(x for _, x in m.ready),
                 *(x for b in m.buckets for x in (b.launch, b.end))]
        it = iter(self.clock.resolve(marks))
        start = next(it)
        fwd_end, bwd_start, bwd_end, opt_start, opt_end, end, module_end = (
            None if x is None else next(it) - start for x in optional)
        ready = [(i, next(it) - start) for i, _ in m.ready]
        spans = [BucketSpan(b.index, b.param_indices, b.nbytes, next(it) - start, next(it) - start)
                 for b in m.buckets]
        last_ready = ready[-1][1]
        return StepRecord(
            step=m.step,
            kind=m.kind,
            start_s=start,
            forward_end_s=fwd_end,
            backward_start_s=ready[0][1] if bwd_start is None else bwd_start,
            backward_end_s=last_ready if bwd_end is None else max(bwd_end, last_ready),
            grad_ready=tuple(ready),
            buckets=tuple(sorted(spans, key=lambda s: s.launch_s)),
            optimizer_start_s=opt_start,
            optimizer_end_s=opt_end,
            step_end_s=end,
            module_forward_end_s=module_end,
        )
