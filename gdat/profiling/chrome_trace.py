"""Export a :class:`Profile` as Chrome trace JSON (opens in Perfetto and chrome://tracing).

One process per rank ("rank N"), with two threads: "compute" holds a span per step
and inside it the forward, backward and optimizer spans plus an instant mark per
gradient ready (named after the parameter); "allreduce" holds one span per bucket.
Times are microseconds from the rank's first recorded step (ranks on different
hosts have unrelated clocks, so each rank starts at 0).
"""
from __future__ import annotations

import json
from typing import Any

from gdat.core.jsonio import atomic_write_text
from gdat.core.profile import Profile

__all__ = ["chrome_trace", "write_chrome_trace"]

_COMPUTE, _COMM = 0, 1


def _span(name: str, pid: int, tid: int, start_s: float, end_s: float, cat: str,
          args: dict[str, Any] | None = None) -> dict[str, Any]:
    ev = {"name": name, "cat": cat, "ph": "X", "pid": pid, "tid": tid,
          "ts": round(start_s * 1e6, 3), "dur": round(max(0.0, end_s - start_s) * 1e6, 3)}
    if args:
        ev["args"] = args
    return ev


def chrome_trace(profile: Profile) -> dict[str, Any]:
    """The trace as a JSON-ready dict (``{"traceEvents": [...]}``)."""
    names = {p.index: p.name for p in profile.params}
    events: list[dict[str, Any]] = []
    for r in profile.ranks:
        pid = r.rank
        events.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": f"rank {r.rank} ({r.host})"}})
        events.append({"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": r.rank}})
        for tid, label in ((_COMPUTE, "compute"), (_COMM, "allreduce")):
            events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": label}})
        if not r.steps:
            continue
        origin = r.steps[0].start_s
        for s in r.steps:
            t0 = s.start_s - origin
            end = s.step_end_s if s.step_end_s is not None else max(
                [s.backward_end_s, s.comm_end_s or 0.0, s.optimizer_end_s or 0.0])
            events.append(_span(f"step {s.step} ({s.kind})", pid, _COMPUTE, t0, t0 + end, "step"))
            events.append(_span("forward", pid, _COMPUTE, t0, t0 + s.forward_end_s, "forward"))
            events.append(_span("backward", pid, _COMPUTE, t0 + s.backward_start_s, t0 + s.backward_end_s,
                                "backward", {"gradients": len(s.grad_ready)}))
            if s.optimizer_start_s is not None and s.optimizer_end_s is not None:
                events.append(_span("optimizer", pid, _COMPUTE, t0 + s.optimizer_start_s,
                                    t0 + s.optimizer_end_s, "optimizer"))
            for i, t in s.grad_ready:
                events.append({"name": names.get(i, str(i)), "cat": "grad_ready", "ph": "i", "s": "t",
                               "pid": pid, "tid": _COMPUTE, "ts": round((t0 + t) * 1e6, 3),
                               "args": {"param_index": i}})
            for b in s.buckets:
                events.append(_span(f"bucket {b.index}", pid, _COMM, t0 + b.launch_s, t0 + b.end_s, "allreduce",
                                    {"bytes": b.nbytes, "params": len(b.param_indices)}))
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"world_size": profile.world_size, "backend": profile.backend}}


def write_chrome_trace(profile: Profile, path: str) -> None:
    """Write :func:`chrome_trace` to ``path`` atomically."""
    atomic_write_text(path, json.dumps(chrome_trace(profile)))
