"""Apply a bucket plan to stock DDP: at construction, or to a live instance.

:func:`ddp_bucket_arguments` turns a plan into DDP constructor arguments:
``bucket_cap_mb_list`` (exact, torch >= 2.13) or, on a torch without it, the
uniform ``bucket_cap_mb`` whose buckets are closest to the plan's (fewest differing
bucket boundaries), with a warning that the plan is approximated.

:func:`switch_buckets` changes the buckets of a live DDP between steps.  It rebuilds
DDP's reducer exactly as DDP's constructor does, with the new bucket configuration,
after removing the old reducer's autograd hooks, and re-registers the comm hooks the
user had registered (:func:`gdat.reducer.torch_internals.rebuild_reducer`, DDP's own private
initialisation path).  Parameters, ``.grad`` and the optimizer are not touched.
The new reducer behaves as a freshly built stock DDP: its first step uses DDP's
initial bucketing (definition order) and it rebuilds buckets in gradient-ready order
at the next step, from which on the buckets are exactly those of a stock DDP
constructed with the same arguments (checked by the tests through the buckets DDP
hands to a comm hook).  A DDP with ``find_unused_parameters=True`` never rebuilds:
its initial buckets, formed from the caps in its fixed order
(:data:`gdat.core.layout.FIXED_ORDER`), are the plan's from the first step after the
switch.  Static-graph DDP is re-marked static.

:class:`LiveBuckets` is the tuning loop's view of one live DDP: what its reducer
runs, switched (with gdat's compression hook where a plan compresses) only when
that changes.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch

from gdat.core.layout import GradientLayout
from gdat.core.plan import MIB, BucketPlan, plan_from_caps
from gdat.errors import GdatWarning, PlanError
from gdat.reducer import compression
from gdat.reducer.ddp_model import WeakAttribute
from gdat.reducer.torch_internals import rebuild_reducer, supports_cap_list

__all__ = ["ddp_bucket_arguments", "closest_uniform_cap_mb", "switch_buckets", "PlanApproximated"]


class PlanApproximated(GdatWarning):
    """This torch cannot express a per-bucket plan; a uniform cap approximates it."""


def closest_uniform_cap_mb(plan: BucketPlan, layout: GradientLayout) -> float:
    """The uniform ``bucket_cap_mb`` whose DDP buckets from ``layout`` differ least
    from ``plan`` (symmetric difference of bucket boundaries, then bucket count)."""
    pos = {p: j for j, p in enumerate(layout.order)}
    want = {pos[b.params[-1]] for b in plan.buckets}
    best: tuple[tuple[int, int], float] | None = None
    for cap in sorted({b.nbytes for b in plan.buckets} | {max(1, plan.bucket_bytes[0])}):
        formed = plan_from_caps(layout, [cap])
        got = {pos[b.params[-1]] for b in formed.buckets}
        score = (len(want ^ got), abs(len(formed.buckets) - len(plan.buckets)))
        if best is None or score < best[0]:
            best = (score, cap / MIB)
    assert best is not None
    return best[1]


def ddp_bucket_arguments(plan: BucketPlan, layout: GradientLayout) -> dict[str, Any]:
    """DDP keyword arguments that make it form ``plan`` from the gradients of
    ``layout`` (see the module docstring)."""
    if supports_cap_list():
        return {"bucket_cap_mb": None, "bucket_cap_mb_list": plan.ddp_caps_mb(layout)}
    cap = closest_uniform_cap_mb(plan, layout)
    warnings.warn(f"this torch has no bucket_cap_mb_list: plan {plan.label!r} approximated by "
                  f"bucket_cap_mb={cap:g}", PlanApproximated, stacklevel=2)
    return {"bucket_cap_mb": cap}


def switch_buckets(ddp: torch.nn.Module, bucket_cap_mb: float | None = None,
                   bucket_cap_mb_list: Sequence[float] | None = None) -> None:
    """Rebuild ``ddp``'s reducer as DDP would construct it with these arguments.

    Call between steps (after ``optimizer.step()``, before the next forward).
    """
    if bucket_cap_mb_list is not None and not supports_cap_list():
        raise PlanError("this torch's DDP has no bucket_cap_mb_list")
    rebuild_reducer(ddp, bucket_cap_mb, bucket_cap_mb_list)


class LiveBuckets:
    """What a live DDP's reducer runs, rebuilt only when that changes: the user's
    configuration (``"user"``), the same with the profile's tracing hook on it
    (``"traced user"``, :meth:`traced`), or a plan (``"plan"``), with gdat's
    compression hook exactly when the plan compresses buckets."""

    ddp = WeakAttribute()

    def __init__(self, ddp: torch.nn.Module, user_args: dict[str, Any]) -> None:
        self.ddp = ddp
        self.user_args = user_args
        self.running = "user"

    def traced(self) -> None:
        """The profile's tracing hook is now on the reducer."""
        self.running = "traced user"

    def to_plan(self, plan: BucketPlan, layout: GradientLayout, probe: bool = False) -> None:
        """Switch to ``plan`` (its compression hook's error probe on where ``probe``)."""
        compression.forget(self.ddp)
        switch_buckets(self.ddp, **ddp_bucket_arguments(plan, layout))
        self.running = "plan"
        if plan.compressed:
            compression.install(self.ddp, plan).probe = probe

    def to_user(self, keep_tracer: bool = False) -> None:
        """Switch to the user's configuration: no rebuild when the reducer runs it
        already, nor, with ``keep_tracer``, when it runs it with the tracing hook
        (which averages as DDP does; a rebuild would only restart DDP's runtime
        logging, ``_get_ddp_logging_data``)."""
        if self.running == "user" or (keep_tracer and self.running == "traced user"):
            return
        compression.forget(self.ddp)
        switch_buckets(self.ddp, **self.user_args)
        self.running = "user"

    def drop_tracer(self) -> None:
        """Take the tracing hook off the reducer (a rebuild with the user's
        configuration), where it is on it; a plan's reducer stays as it is."""
        if self.running == "traced user":
            self.to_user()
