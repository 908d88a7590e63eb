"""Allreduce microbenchmark on the live process group, fitted to ``t = alpha + beta n``.

Ladder: message sizes ``min_bytes * 2^k`` (float32 tensors) up to ``max_bytes``,
smallest first, while the time budget lasts.  Per size: one warm-up allreduce,
then ``reps`` back-to-back timed allreduces (after the first, the collective itself
keeps ranks in step), ``reps`` chosen so a size takes about ``budget / 8`` seconds
(3 to 30).  A size's time is the median over its repeats on each rank, then the
maximum over ranks (the collective is done when the slowest rank is done).

The ladder always reaches at least :data:`MIN_TOP_BYTES` (1 MiB), whatever the
budget: below that, per-message latency dominates and the bandwidth term cannot be
fitted.  That floor costs milliseconds on any real link (a 1 MiB ring allreduce of
2 ranks takes 17 ms at 1 Gbit/s), so a tiny budget gives a coarse fit, never none.

Every decision that changes which collectives run (repeats, whether to go on) is
taken from values all ranks agree on through a small MAX allreduce, so ranks never
diverge.  The caller's budget bounds the ladder; the last size started finishes, and
at least two sizes are measured (a fit needs them) even when the budget is spent
sooner on a busy host.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch
import torch.distributed as dist

from gdat.core.cost_model import AllreduceCostModel
from gdat.core.device import Clock, device_for_backend
from gdat.errors import UsageError
from gdat.profiling.allreduce_fit import fit_allreduce

__all__ = ["measure_allreduce", "fit_from_ladder", "MIN_TOP_BYTES"]

MIN_TOP_BYTES = 1 << 20


def _agreed_max(values: list[float], group: Any, device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t.cpu().tolist()


def measure_allreduce(
    budget_s: float = 3.0,
    group: Any = None,
    min_bytes: int = 4 << 10,
    max_bytes: int = 64 << 20,
    clock: Clock | None = None,
) -> list[tuple[int, float]]:
    """``(bytes, seconds)`` per ladder size; a collective (every rank calls it)."""
    if not budget_s > 0:
        raise UsageError(f"allreduce budget must be positive seconds, got {budget_s}")
    if min_bytes < 4 or max_bytes < min_bytes:
        raise UsageError("allreduce ladder needs 4 <= min_bytes <= max_bytes")
    group = group if group is not None else dist.group.WORLD
    device = device_for_backend(str(dist.get_backend(group)), int(os.environ.get("LOCAL_RANK", "0")))
    clock = clock or Clock(device.type)
    per_size_s = budget_s / 8
    began = time.perf_counter()
    out: list[tuple[int, float]] = []
    nbytes = min_bytes
    while nbytes <= max_bytes:
        buf = torch.zeros(nbytes // 4, dtype=torch.float32, device=device)
        m0 = clock.mark()
        dist.all_reduce(buf, group=group)
        m1 = clock.mark()
        t0, t1 = clock.resolve([m0, m1])
        first, elapsed = _agreed_max([t1 - t0, time.perf_counter() - began], group, device)
        reps = int(min(30, max(3, per_size_s // max(first, 1e-6))))
        marks = [clock.mark()]
        for _ in range(reps):
            dist.all_reduce(buf, group=group)
            marks.append(clock.mark())
        times = clock.resolve(marks)
        median = statistics.median(b - a for a, b in zip(times, times[1:]))
        median, elapsed = _agreed_max([median, time.perf_counter() - began], group, device)
        out.append((nbytes, median))
        if elapsed >= budget_s and len(out) >= 2 and nbytes >= min(MIN_TOP_BYTES, max_bytes):
            break
        nbytes *= 2
    return out


def fit_from_ladder(samples: list[tuple[int, float]], source: str = "microbenchmark") -> AllreduceCostModel:
    """Fit the ladder's samples (see :func:`gdat.profiling.allreduce_fit.fit_allreduce`)."""
    return fit_allreduce([n for n, _ in samples], [t for _, t in samples], source)
