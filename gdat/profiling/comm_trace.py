"""A DDP communication hook that timestamps each bucket's allreduce.

:func:`tracing_allreduce_hook` does what stock DDP does without a hook: it scales the
flat bucket by ``1 / world_size`` and allreduces it with a sum, so the averaged
gradients are bitwise those of stock DDP (stock DDP multiplies each gradient by the
same ``1 / world_size`` while copying it into the bucket; multiplication by the same
float is elementwise, so doing it on the whole bucket gives the same bits).

The hook records, per bucket, the launch time (when DDP hands the bucket over) and
the completion time (when the allreduce's future completes).  Its
:class:`BucketTracer` state has three modes:

* ``"overlap"``: launch each allreduce at once, as stock DDP does;
* ``"deferred"``: hold every bucket until DDP hands over the last one, then launch
  them all in order.  Backward then runs without communication (a compute-only
  profile) while the step still synchronises gradients exactly, so no training step
  is lost;
* ``"off"``: launch at once, record nothing.

With a :class:`gdat.reducer.compression.CompressionState` as ``compression``, each bucket
is reduced as that state says (the buckets it compresses in their reduced dtype,
the others exactly as above), so tracing composes with per-bucket compression.
"""

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist

from gdat.core.device import Clock
from gdat.reducer.compression import CompressionState

__all__ = ["BucketTracer", "TracedBucket", "tracing_allreduce_hook", "MODES"]

MODES = ("overlap", "deferred", "off")


@dataclass
class TracedBucket:
    """One traced bucket: DDP bucket index, parameter indices (DDP order), bytes,
    and clock marks of launch and completion (``end`` is set when it completes)."""

    index: int
    param_indices: tuple[int, ...]
    nbytes: int
    launch: Any
    end: Any = None


@dataclass
class BucketTracer:
    """State of :func:`tracing_allreduce_hook`.

    ``param_index`` maps a parameter tensor's ``id`` to its DDP index.
    ``on_bucket(traced)`` is called when a bucket completes, from the thread that
    completes the allreduce.  ``compression``: reduce buckets as it says (module
    docstring).
    """

    clock: Clock
    param_index: dict[int, int]
    process_group: Any = None
    mode: str = "overlap"
    on_bucket: Callable[[TracedBucket], None] | None = None
    compression: CompressionState | None = None
    _held: list[tuple[Any, list[torch.Tensor], torch.futures.Future, TracedBucket]] = field(default_factory=list)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown tracer mode {mode!r}")
        self.mode = mode

    def _launch(self, buffer: torch.Tensor, parameters: list[torch.Tensor],
                traced: TracedBucket | None) -> torch.futures.Future:
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        if self.compression is not None:
            if traced is not None:
                traced.launch = self.clock.mark()
            fut = self.compression.launch(buffer, parameters)
        else:
            buffer.mul_(1.0 / dist.get_world_size(group))
            if traced is not None:
                traced.launch = self.clock.mark()
            fut = dist.all_reduce(buffer, group=group, async_op=True).get_future()
        # The callback may run, and be released, on a gloo worker thread: it must not
        # hold this tracer, whose process group would then be destroyed on that very
        # thread (which cannot join itself: the process aborts at exit).
        clock, on_bucket = self.clock, self.on_bucket

        def done(f: torch.futures.Future) -> torch.Tensor:
            if traced is not None:
                traced.end = clock.mark()
                if on_bucket is not None:
                    on_bucket(traced)
            return f.value()[0] if isinstance(f.value(), list) else f.value()

        return fut.then(done)

    def _describe(self, bucket: dist.GradBucket) -> TracedBucket:
        params = tuple(self.param_index[id(p)] for p in bucket.parameters())
        buf = bucket.buffer()
        return TracedBucket(bucket.index(), params, buf.numel() * buf.element_size(), self.clock.mark())

    def hook(self, bucket: dist.GradBucket) -> torch.futures.Future:
        if self.mode == "off":
            return self._launch(bucket.buffer(), bucket.parameters(), None)
        traced = self._describe(bucket)
        if self.mode == "overlap":
            return self._launch(bucket.buffer(), bucket.parameters(), traced)
        placeholder: torch.futures.Future = torch.futures.Future()
        self._held.append((bucket.buffer(), bucket.parameters(), placeholder, traced))
        if bucket.is_last():
            held, self._held = self._held, []
            for buffer, params, slot, t in held:
                self._launch(buffer, params, t).add_done_callback(lambda f, slot=slot: _forward(f, slot))
        return placeholder


def _forward(done: torch.futures.Future, slot: torch.futures.Future) -> None:
    """Complete ``slot`` with ``done``'s result or error (so DDP never waits forever)."""
    try:
        slot.set_result(done.value())
    except Exception as e:  # the allreduce failed: hand the error to DDP
        slot.set_exception(e)


def tracing_allreduce_hook(state: BucketTracer, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook (``ddp.register_comm_hook(tracer, tracing_allreduce_hook)``)."""
    return state.hook(bucket)
