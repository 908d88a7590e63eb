"""DDP's private members: the one module of gdat that touches them, checked first.

gdat switches a live DDP to another bucket plan by rebuilding its reducer the way
DDP's own constructor builds it, and it reads and edits the list of comm hooks
registered on it.  Both need members of torch's DDP that are not public API
(torch 2.13):

===========================================================  =========================================
member                                                       use
===========================================================  =========================================
``DistributedDataParallel._ddp_init_helper``                 build a reducer with new bucket caps
``._build_params_for_reducer``                               its parameters, as the constructor passes
``._build_debug_param_to_name_mapping``                      its debug names, likewise
``._remove_autograd_hooks``                                  detach the old reducer's gradient hooks
``torch.nn.parallel.distributed._BucketCapacityConfig``      caps exactly as the constructor derives them
``Reducer._set_static_graph``, ``Logger._set_static_graph``  re-mark a rebuilt static-graph reducer
``torch._dynamo.utils.get_optimize_ddp_mode``                recognise the python-reducer mode
instance ``_comm_hooks``                                     the user's comm hooks (re-registered)
instance ``_use_python_reducer``, ``_bucket_config``,        the constructor's state a rebuild resets
``_has_rebuilt_buckets``,
``_static_graph_delay_allreduce_enqueued`` (static graph)
module ``_ddp_params_and_buffers_to_ignore``                 parameters DDP ignores (optional)
===========================================================  =========================================

:func:`internals_available` checks, when gdat's DDP is constructed and before any
tuning, that this torch has every member of the table (the class-level ones before
DDP is built, those its constructor sets right after); where one is missing gdat
warns once and the model runs as stock DDP.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import torch
import torch.nn.parallel.distributed as ddp_module

from gdat.core import log

__all__ = ["STOCK_DDP", "internals_available", "missing_internals", "lacking", "supports_cap_list",
           "python_reducer_active", "comm_hooks", "remove_comm_hook", "detach_comm_hook", "rebuild_reducer", "ignored_parameter_names"]

STOCK_DDP: type = next(c for c in ddp_module.DistributedDataParallel.__mro__
                       if c.__module__ == "torch.nn.parallel.distributed")

_CLASS_MEMBERS = ("_ddp_init_helper", "_build_params_for_reducer", "_build_debug_param_to_name_mapping",
                  "_remove_autograd_hooks")
_INSTANCE_MEMBERS = ("_comm_hooks", "_use_python_reducer", "_bucket_config", "_has_rebuilt_buckets")
_STATIC_GRAPH_MEMBERS = ("_static_graph_delay_allreduce_enqueued",)
_warned = False


def missing_internals(ddp: torch.nn.Module | None = None) -> list[str]:
    """The members of the module docstring's table this torch lacks: class-level
    ones, and with ``ddp`` (a constructed DDP) also those its constructor sets."""
    missing = [f"DistributedDataParallel.{m}" for m in _CLASS_MEMBERS if not callable(getattr(STOCK_DDP, m, None))]
    config = getattr(ddp_module, "_BucketCapacityConfig", None)
    if not callable(getattr(config, "create", None)):
        missing.append("torch.nn.parallel.distributed._BucketCapacityConfig.create")
    c10d = torch._C._distributed_c10d
    for owner in ("Reducer", "Logger"):
        if not callable(getattr(getattr(c10d, owner, None), "_set_static_graph", None)):
            missing.append(f"{owner}._set_static_graph")
    if not callable(getattr(getattr(getattr(torch, "_dynamo", None), "utils", None), "get_optimize_ddp_mode", None)):
        missing.append("torch._dynamo.utils.get_optimize_ddp_mode")
    if ddp is not None:
        needed = _INSTANCE_MEMBERS + (_STATIC_GRAPH_MEMBERS if getattr(ddp, "static_graph", False) else ())
        missing += [f"DistributedDataParallel().{m}" for m in needed if not hasattr(ddp, m)]
    return missing


def internals_available(ddp: torch.nn.Module | None = None) -> bool:
    """Whether every member gdat needs exists (see :func:`missing_internals`);
    if not, warn once in this process that gdat leaves the model as stock DDP."""
    global _warned
    missing = missing_internals(ddp)
    if missing and not _warned:
        _warned = True
        log.warn(lacking(missing))
    return not missing


def lacking(missing: Sequence[str]) -> str:
    """Why a model runs as stock DDP when this torch lacks the ``missing`` members."""
    return f"this torch's DDP lacks {', '.join(missing)}; gdat cannot tune it and this model runs as stock DDP"


def supports_cap_list() -> bool:
    """Whether this torch's DDP accepts ``bucket_cap_mb_list`` (torch >= 2.13)."""
    return "bucket_cap_mb_list" in inspect.signature(STOCK_DDP.__init__).parameters


def python_reducer_active() -> bool:
    """Whether ``torch.compile`` is set to run DDP through its python reducer."""
    return torch._dynamo.utils.get_optimize_ddp_mode() == "python_reducer"


def comm_hooks(ddp: torch.nn.Module) -> list[tuple[Callable[..., Any], Any]]:
    """``(hook, state)`` of every comm hook registered on ``ddp``, in order."""
    return list(ddp._comm_hooks)


def remove_comm_hook(ddp: torch.nn.Module, hook: Callable[..., Any], state: Any) -> None:
    """Forget a registered comm hook: a reducer rebuilt later does not get it back
    (the current reducer keeps calling it)."""
    if (hook, state) in ddp._comm_hooks:
        ddp._comm_hooks.remove((hook, state))


def detach_comm_hook(ddp: torch.nn.Module, hook: Callable[..., Any], state: Any) -> None:
    """Take a registered comm hook off ``ddp`` now: forget it and rebuild the reducer
    with the bucket configuration it has (a reducer keeps its hook for life)."""
    remove_comm_hook(ddp, hook, state)
    config, mib = ddp._bucket_config, float(1 << 20)
    if config.per_bucket_bytes_caps:
        rebuild_reducer(ddp, None, [c / mib for c in config.per_bucket_bytes_caps])
    elif config.first_bucket_bytes_cap < config.bucket_bytes_cap:
        rebuild_reducer(ddp, None, None)
    else:
        rebuild_reducer(ddp, config.bucket_bytes_cap / mib, None)


def rebuild_reducer(ddp: torch.nn.Module, bucket_cap_mb: float | None,
                    bucket_cap_mb_list: Sequence[float] | None) -> None:
    """Replace ``ddp``'s reducer by the one DDP's constructor builds with these
    bucket arguments (see :func:`gdat.reducer.plan_switch.switch_buckets`)."""
    hooks = comm_hooks(ddp)
    ddp._remove_autograd_hooks()
    config = ddp_module._BucketCapacityConfig.create(
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


def ignored_parameter_names(module: torch.nn.Module) -> set[str]:
    """Names of ``module``'s parameters DDP is told to ignore (DDP's
    ``_set_params_and_buffers_to_ignore_for_model`` stores them on the module)."""
    return set(getattr(module, "_ddp_params_and_buffers_to_ignore", ()))

