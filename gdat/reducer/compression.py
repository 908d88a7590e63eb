"""Per-bucket gradient compression (opt-in: ``--gdat-compress bf16|fp16``).

One DDP comm hook, :func:`compression_hook`, allreduces the buckets a plan marks
compressed in a reduced dtype and every other bucket exactly.  With world size ``W``
and rank ``r``'s flat float32 bucket ``g_r``:

* exact bucket: ``sum_r g_r * (1/W)`` in float32, what stock DDP computes, bitwise
  (the argument of :mod:`gdat.profiling.comm_trace`);
* compressed bucket, reduced dtype ``d`` with rounding ``q_d``:
  ``float32(sum_r^(d) (q_d(g_r) /_d W))``: cast to ``d``, divide by ``W`` in ``d``,
  sum in ``d`` (the backend's allreduce), cast back into the bucket.  This is the
  arithmetic of torch's stock ``bf16_compress_hook`` / ``fp16_compress_hook``, so a
  compressed bucket holds exactly what stock DDP with that hook gives it (tested).
  Each element keeps 8 (bf16) or 11 (fp16) significant bits, a relative rounding
  error up to ``2^-8`` or ``2^-11`` per rounding; fp16 also overflows above 65504.
  The link carries ``size(d) / size(float32) = 1/2`` of the bucket's bytes; the
  casts cost compute time per byte (:mod:`gdat.profiling.cast_bench`).

Only float32 buckets are compressed (a bucket of another dtype is reduced exactly).
A bucket is named by its parameters (DDP indices), not by DDP's bucket index: the
first step after a reducer rebuild runs DDP's initial bucketing, whose buckets do
not match the plan's, and then nothing is compressed that the plan did not ask for.

Backends.  gloo on torch 2.13 sums float16 and bfloat16 (probed when this was
written, and by :func:`reduced_allreduce_works` in every job that opts in).  NCCL
sums both (bfloat16 since NCCL 2.10 with CUDA 11).  HCCL documents float16 and
bfloat16 allreduce on Ascend 910B; no Ascend machine has run it here.  Whatever
the backend, the probe decides: where a tiny allreduce in the reduced dtype fails,
gdat says so in one line and tunes without compression.

Error probe.  With :attr:`CompressionState.probe` on, each compressed bucket is
also allreduced at full precision (one extra allreduce) and the relative error
``||compressed - exact||_2 / ||exact||_2`` of the averaged bucket is recorded per
plan bucket in :attr:`CompressionState.errors`.
"""

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from gdat.core.device import device_for_backend
from gdat.core.plan import BucketPlan
from gdat.reducer.ddp_model import process_group_of, reducer_parameters
from gdat.reducer.torch_internals import STOCK_DDP, comm_hooks, remove_comm_hook

__all__ = ["REDUCED_DTYPES", "COMPRESSIBLE_DTYPE", "CompressionState", "compression_hook", "allreduce_average",
           "reduced_allreduce_works", "compressed_bytes", "install", "installed", "forget"]

REDUCED_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
COMPRESSIBLE_DTYPE = "float32"


def compressed_bytes(plan: BucketPlan) -> int:
    """Bytes (at full precision) of the buckets ``plan`` compresses."""
    return sum(b.nbytes for b in plan.buckets if b.compress)


@dataclass
class CompressionState:
    """State of :func:`compression_hook`: which buckets to compress and how.

    ``selected`` maps the parameter set of each compressed plan bucket to its plan
    bucket index and reduced dtype; ``param_index`` maps a parameter tensor's ``id``
    to its DDP index; ``errors`` holds the error probe's last value per plan bucket.
    """

    selected: dict[frozenset[int], tuple[int, torch.dtype]]
    param_index: dict[int, int]
    process_group: Any = None
    probe: bool = False
    errors: dict[int, float] = field(default_factory=dict)

    @classmethod
    def for_plan(cls, plan: BucketPlan, params: list[torch.nn.Parameter], process_group: Any = None
                 ) -> "CompressionState":
        """The state compressing ``plan``'s marked float32 buckets; ``params`` are
        the DDP's parameters in DDP index order (:func:`gdat.reducer.ddp_model.reducer_parameters`)."""
        selected = {frozenset(b.params): (k, REDUCED_DTYPES[b.compress]) for k, b in enumerate(plan.buckets)
                    if b.compress and b.dtype == COMPRESSIBLE_DTYPE}
        return cls(selected, {id(p): i for i, p in enumerate(params)}, process_group)

    @property
    def group(self) -> Any:
        return self.process_group if self.process_group is not None else dist.group.WORLD

    def reduced_dtype(self, parameters: list[torch.Tensor]) -> tuple[int, torch.dtype] | None:
        """``(plan bucket, dtype)`` when the bucket of ``parameters`` is compressed."""
        if not self.selected:
            return None
        return self.selected.get(frozenset(self.param_index.get(id(p), -1) for p in parameters))

    def launch(self, buffer: torch.Tensor, parameters: list[torch.Tensor]) -> torch.futures.Future:
        """Allreduce-average ``buffer`` (the bucket of ``parameters``) in place."""
        chosen = self.reduced_dtype(parameters)
        if chosen is None:
            return allreduce_average(buffer, self.group, None)
        k, dtype = chosen
        return allreduce_average(buffer, self.group, dtype, (self.errors, k) if self.probe else None)


def allreduce_average(buffer: torch.Tensor, group: Any, reduced: torch.dtype | None,
                      probe: tuple[dict[int, float], int] | None = None) -> torch.futures.Future:
    """Average ``buffer`` over ``group`` in place: exactly (``reduced`` None) or in
    ``reduced`` (module docstring); the future's value is ``buffer``.  ``probe``
    ``(errors, k)``: also reduce exactly and store the relative error in ``errors[k]``."""
    world = dist.get_world_size(group)
    if reduced is None:
        buffer.mul_(1.0 / world)
        return dist.all_reduce(buffer, group=group, async_op=True).get_future().then(lambda f: f.value()[0])
    futures = []
    if probe is not None:
        exact = buffer.mul(1.0 / world)
        futures.append(dist.all_reduce(exact, group=group, async_op=True).get_future())
    small = buffer.to(reduced).div_(world)
    futures.append(dist.all_reduce(small, group=group, async_op=True).get_future())

    def back(done: torch.futures.Future) -> torch.Tensor:
        parts = [f.value()[0] for f in done.value()]
        buffer.copy_(parts[-1])
        if probe is not None:
            errors, k = probe
            norm = float(torch.linalg.vector_norm(parts[0]))
            errors[k] = float(torch.linalg.vector_norm(buffer - parts[0])) / norm if norm > 0 else 0.0
        return buffer

    # collect_all completes when every part has: the exact copy is read without waiting inside a callback
    return torch.futures.collect_all(futures).then(back)


def compression_hook(state: CompressionState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook (``ddp.register_comm_hook(state, compression_hook)``)."""
    return state.launch(bucket.buffer(), bucket.parameters())


def reduced_allreduce_works(name: str, group: Any = None) -> str | None:
    """``None`` when ``group``'s backend sums tensors of the reduced dtype ``name``,
    else why not (a collective: every rank calls it; a tiny allreduce)."""
    group = group if group is not None else dist.group.WORLD
    backend = str(dist.get_backend(group))
    device = device_for_backend(backend, int(os.environ.get("LOCAL_RANK", "0")))
    t = torch.ones(4, dtype=REDUCED_DTYPES[name], device=device)
    try:
        dist.all_reduce(t, group=group)
    except (RuntimeError, ValueError, TypeError) as e:
        return f"{backend} cannot allreduce {name} on this torch ({str(e).splitlines()[0] if str(e) else e})"
    if float(t[0]) != dist.get_world_size(group):
        return f"{backend} summed {name} wrongly on this torch"
    return None


def install(ddp: torch.nn.Module, plan: BucketPlan) -> CompressionState:
    """Register :func:`compression_hook` on ``ddp`` (which has no comm hook) for
    ``plan``'s compressed buckets; returns its state."""
    state = CompressionState.for_plan(plan, [p for _, p in reducer_parameters(ddp)], process_group_of(ddp))
    STOCK_DDP.register_comm_hook(ddp, state, compression_hook)
    return state


def installed(ddp: torch.nn.Module) -> CompressionState | None:
    """The state of the compression hook registered on ``ddp``, if any."""
    return next((state for hook, state in comm_hooks(ddp) if hook is compression_hook), None)


def forget(ddp: torch.nn.Module) -> None:
    """Forget the compression hook: the next reducer rebuild leaves it out."""
    state = installed(ddp)
    if state is not None:
        remove_comm_hook(ddp, compression_hook, state)
