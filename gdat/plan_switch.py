"""Apply a bucket plan to stock DDP: at construction, or to a live instance.

:func:`ddp_bucket_arguments` turns a plan into DDP constructor arguments:
``bucket_cap_mb_list`` (exact, torch >= 2.13) or, on a torch without it, the
uniform ``bucket_cap_mb`` whose buckets are closest to the plan's (fewest differing
bucket boundaries), with a warning that the plan is approximated.

:func:`switch_buckets` changes the buckets of a live DDP between steps.  It rebuilds
DDP's reducer exactly as DDP's constructor does (``_ddp_init_helper``, DDP's own
private initialisation path) with the new bucket configuration, after removing the
old reducer's autograd hooks, and re-registers the comm hooks the user had
registered.  Parameters, ``.grad`` and the optimizer are not touched.  The new
reducer behaves as a freshly built stock DDP: its first step uses DDP's initial
bucketing (definition order) and it rebuilds buckets in gradient-ready order at the
next step, from which on the buckets are exactly those of a stock DDP constructed
with the same arguments (checked by the tests through the buckets DDP hands to a
comm hook).  Static-graph DDP is re-marked static.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch

from gdat.errors import GdatWarning, PlanError
from gdat.plan import MIB, BucketPlan, ddp_supports_cap_list, plan_from_caps

__all__ = ["ddp_bucket_arguments", "closest_uniform_cap_mb", "switch_buckets", "PlanApproximated"]


class PlanApproximated(GdatWarning):
    """This torch cannot express a per-bucket plan; a uniform cap approximates it."""


def closest_uniform_cap_mb(
    plan: BucketPlan, order: Sequence[int], nbytes: Sequence[int], dtypes: Sequence[str]
) -> float:
    """The uniform ``bucket_cap_mb`` whose DDP buckets differ least from ``plan``
    (symmetric difference of bucket boundaries, then bucket count)."""
    pos = {p: j for j, p in enumerate(order)}
    want = {pos[b.params[-1]] for b in plan.buckets}
    best: tuple[tuple[int, int], float] | None = None
    for cap in sorted({b.nbytes for b in plan.buckets} | {max(1, plan.bucket_bytes[0])}):
        formed = plan_from_caps(order, nbytes, dtypes, [cap])
        got = {pos[b.params[-1]] for b in formed.buckets}
        score = (len(want ^ got), abs(len(formed.buckets) - len(plan.buckets)))
        if best is None or score < best[0]:
            best = (score, cap / MIB)
    assert best is not None
    return best[1]


def ddp_bucket_arguments(
    plan: BucketPlan, order: Sequence[int], nbytes: Sequence[int], dtypes: Sequence[str]
) -> dict[str, Any]:
    """DDP keyword arguments that make it form ``plan`` (see the module docstring)."""
    if ddp_supports_cap_list():
        return {"bucket_cap_mb": None, "bucket_cap_mb_list": plan.ddp_caps_mb(order, nbytes, dtypes)}
    plan.check_matches(order, nbytes, dtypes)
    cap = closest_uniform_cap_mb(plan, order, nbytes, dtypes)
    warnings.warn(f"this torch has no bucket_cap_mb_list: plan {plan.label!r} approximated by "
                  f"bucket_cap_mb={cap:g}", PlanApproximated, stacklevel=2)
    return {"bucket_cap_mb": cap}


def switch_buckets(ddp: torch.nn.Module, bucket_cap_mb: float | None = None,
                   bucket_cap_mb_list: Sequence[float] | None = None) -> None:
    """Rebuild ``ddp``'s reducer as DDP would construct it with these arguments.

    Call between steps (after ``optimizer.step()``, before the next forward).
    """
    from torch.nn.parallel.distributed import _BucketCapacityConfig

    if bucket_cap_mb_list is not None and not ddp_supports_cap_list():
        raise PlanError("this torch's DDP has no bucket_cap_mb_list")
    hooks = list(getattr(ddp, "_comm_hooks", []))
    ddp.reducer._remove_autograd_hooks()
    config = _BucketCapacityConfig.create(
        bucket_cap_mb=bucket_cap_mb,
        bucket_cap_mb_list=list(bucket_cap_mb_list) if bucket_cap_mb_list is not None else None,
        use_python_reducer=ddp._use_python_reducer)
    ddp._bucket_config = config
    ddp.bucket_bytes_cap = config.bucket_bytes_cap
    ddp.bucket_bytes_cap_list = list(config.per_bucket_bytes_caps)
    ddp.bucket_bytes_cap_default = config.first_bucket_bytes_cap < config.bucket_bytes_cap
    params, sparse = ddp._build_params_for_reducer()
    ddp._ddp_init_helper(params, sparse, ddp._build_debug_param_to_name_mapping(params), ddp.static_graph)
    ddp._has_rebuilt_buckets = False
    if ddp.static_graph:
        ddp.reducer._set_static_graph()
        ddp.logger._set_static_graph()
        ddp._static_graph_delay_allreduce_enqueued = False
    ddp._comm_hooks = []
    for hook, state in hooks:
        ddp.register_comm_hook(state, hook)
