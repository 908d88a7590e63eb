"""Cast microbenchmark: what compressing a bucket costs besides the allreduce.

For float32 buffers of ``MIN_BYTES * 4^k`` bytes up to :data:`MAX_BYTES` (four
sizes, the same on every rank): the compression hook's own casts, ``small =
buf.to(d).div_(W); buf.copy_(small)`` (:mod:`gdat.reducer.compression`), one warm-up, then
3 timed repeats, and more (up to 20) while the size's share of the budget,
``budget / 4``, lasts.  A size's
time is the median of its repeats, then the maximum over ranks (one small MAX
allreduce, so every rank holds the same fit).  The fit is least squares
``t = alpha_s + s_per_byte * n`` with both terms clamped at 0.  Runs only when the
user opted in with ``--gdat-compress``.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from gdat.core.cost_model import CastCost
from gdat.core.device import Clock, device_for_backend
from gdat.reducer.compression import REDUCED_DTYPES

__all__ = ["measure_cast", "MIN_BYTES", "MAX_BYTES"]

MIN_BYTES = 256 << 10
MAX_BYTES = 16 << 20


def measure_cast(dtype: str, budget_s: float = 0.5, group: Any = None) -> CastCost:
    """The fitted :class:`CastCost` of ``dtype`` on this rank's device (a collective)."""
    group = group if group is not None else dist.group.WORLD
    device = device_for_backend(str(dist.get_backend(group)), int(os.environ.get("LOCAL_RANK", "0")))
    clock = Clock(device.type)
    reduced, world = REDUCED_DTYPES[dtype], dist.get_world_size(group)
    sizes, times = [], []
    nbytes = MIN_BYTES
    while nbytes <= MAX_BYTES:
        buf = torch.randn(nbytes // 4, device=device)
        buf.copy_(buf.to(reduced).div_(world))
        marks = [clock.mark()]
        began = time.perf_counter()
        while len(marks) < 21 and (len(marks) < 4 or time.perf_counter() - began < budget_s / 4):
            buf.copy_(buf.to(reduced).div_(world))
            marks.append(clock.mark())
        stamps = clock.resolve(marks)
        sizes.append(nbytes)
        times.append(statistics.median(b - a for a, b in zip(stamps, stamps[1:])))
        nbytes *= 4
    agreed = torch.tensor(times, dtype=torch.float64, device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX, group=group)
    slope, intercept = np.polyfit(np.asarray(sizes, dtype=np.float64), agreed.cpu().numpy(), 1)
    return CastCost(dtype, max(0.0, float(intercept)), max(0.0, float(slope)))
