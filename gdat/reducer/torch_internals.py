"""torch's private members: the one module of gdat that reads or patches them, checked first.

gdat switches a live DDP to another bucket plan by rebuilding its reducer the way
DDP's own constructor builds it, reads and edits the list of comm hooks
registered on it, times backward with autograd's engine, and substitutes its DDP
class where torch and Dynamo name DDP.  These need members of torch (DDP, Dynamo,
c10d, autograd) that are not public API.  Tuning needs DDP's ``bucket_cap_mb_list``
argument, which torch 2.11 added (:data:`OLDEST_TUNED`); the members below were
checked on torch 2.11 to 2.14:

===========================================================  =========================================
member                                                       use
===========================================================  =========================================
``DistributedDataParallel._ddp_init_helper``                 build a reducer with new bucket caps
``._build_params_for_reducer``                               its parameters, as the constructor passes
``._build_debug_param_to_name_mapping``                      its debug names, likewise
``._remove_autograd_hooks``                                  detach the old reducer's gradient hooks
``torch.nn.parallel.distributed._BucketCapacityConfig``      caps exactly as the constructor derives them
                                                             (torch >= 2.12; torch 2.11 keeps them in the
                                                             instance's ``bucket_bytes_cap*`` attributes)
``Reducer._set_static_graph``, ``Logger._set_static_graph``  re-mark a rebuilt static-graph reducer
``torch._dynamo.utils.get_optimize_ddp_mode``                recognise the python-reducer mode
``torch._dynamo.convert_frame.DistributedDataParallel``      the DDP class Dynamo asks (substituted)
``torch.autograd.Variable._execution_engine.queue_callback``  mark the end of backward compute
``torch.utils._pytree.tree_leaves``                          the tensors of a forward's output
instance ``_comm_hooks``                                     the user's comm hooks (re-registered)
instance ``_use_python_reducer``, ``_bucket_config``,        the constructor's state a rebuild resets
``_has_rebuilt_buckets``,
``_static_graph_delay_allreduce_enqueued`` (static graph)
module ``_ddp_params_and_buffers_to_ignore``                 parameters DDP ignores (optional)
instance ``_get_ddp_logging_data``                           DDP's logging data (the demo's bucket sizes)
``DistributedDataParallel._set_ddp_runtime_logging_sample_rate``  watched: the user samples DDP's runtime
                                                             logging, which a rebuild restarts (optional)
``torch.distributed.rendezvous._create_c10d_store``,         a store per elastic restart (optional:
``._torchelastic_use_agent_store``                           without them the worker leaves it as is)
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

__all__ = ["STOCK_DDP", "OLDEST_TUNED", "internals_available", "missing_internals", "lacking", "supports_cap_list",
           "python_reducer_active", "comm_hooks", "remove_comm_hook", "detach_comm_hook", "rebuild_reducer",
           "ignored_parameter_names", "state_without_hooks", "substitute_ddp_class", "queue_backward_callback",
           "output_tensors", "ddp_logging_data", "per_attempt_store", "watch_runtime_logging"]

STOCK_DDP: type = next(c for c in ddp_module.DistributedDataParallel.__mro__
                       if c.__module__ == "torch.nn.parallel.distributed")

OLDEST_TUNED = "2.11"  # the first torch release whose DDP takes bucket_cap_mb_list
_CLASS_MEMBERS = ("_ddp_init_helper", "_build_params_for_reducer", "_build_debug_param_to_name_mapping",
                  "_remove_autograd_hooks")
_INSTANCE_MEMBERS = ("_comm_hooks", "_use_python_reducer", "_has_rebuilt_buckets", "bucket_bytes_cap",
                     "bucket_bytes_cap_list", "bucket_bytes_cap_default")
_STATIC_GRAPH_MEMBERS = ("_static_graph_delay_allreduce_enqueued",)
_warned = False


def missing_internals(ddp: torch.nn.Module | None = None) -> list[str]:
    """The members of the module docstring's table this torch lacks: class-level
    ones, and with ``ddp`` (a constructed DDP) also those its constructor sets."""
    if not supports_cap_list():
        return ["DistributedDataParallel's bucket_cap_mb_list"]
    missing = [f"DistributedDataParallel.{m}" for m in _CLASS_MEMBERS if not callable(getattr(STOCK_DDP, m, None))]
    config = getattr(ddp_module, "_BucketCapacityConfig", None)
    if config is not None and not callable(getattr(config, "create", None)):
        missing.append("torch.nn.parallel.distributed._BucketCapacityConfig.create")
    c10d = torch._C._distributed_c10d
    for owner in ("Reducer", "Logger"):
        if not callable(getattr(getattr(c10d, owner, None), "_set_static_graph", None)):
            missing.append(f"{owner}._set_static_graph")
    if not callable(getattr(getattr(getattr(torch, "_dynamo", None), "utils", None), "get_optimize_ddp_mode", None)):
        missing.append("torch._dynamo.utils.get_optimize_ddp_mode")
    if not hasattr(_convert_frame(), "DistributedDataParallel"):
        missing.append("torch._dynamo.convert_frame.DistributedDataParallel")
    if not callable(getattr(getattr(torch.autograd.Variable, "_execution_engine", None), "queue_callback", None)):
        missing.append("torch.autograd.Variable._execution_engine.queue_callback")
    if not callable(getattr(_pytree(), "tree_leaves", None)):
        missing.append("torch.utils._pytree.tree_leaves")
    if ddp is not None:
        needed = _INSTANCE_MEMBERS + (("_bucket_config",) if config is not None else ()) + \
            (_STATIC_GRAPH_MEMBERS if getattr(ddp, "static_graph", False) else ())
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
    return (f"torch {torch.__version__} lacks {', '.join(missing)}; gdat tunes with torch >= {OLDEST_TUNED} "
            "and this model runs as stock DDP")


def supports_cap_list() -> bool:
    """Whether this torch's DDP accepts ``bucket_cap_mb_list`` (torch >= 2.11)."""
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
    mib = float(1 << 20)
    if ddp.bucket_bytes_cap_list:
        rebuild_reducer(ddp, None, [c / mib for c in ddp.bucket_bytes_cap_list])
    elif ddp.bucket_bytes_cap_default:
        rebuild_reducer(ddp, None, None)
    else:
        rebuild_reducer(ddp, ddp.bucket_bytes_cap / mib, None)


def _set_bucket_caps(ddp: torch.nn.Module, bucket_cap_mb: float | None,
                     bucket_cap_mb_list: Sequence[float] | None) -> None:
    """Give ``ddp`` the bucket caps its constructor derives from these arguments:
    torch >= 2.12 keeps them in ``_bucket_config`` and mirrors them in the
    ``bucket_bytes_cap*`` attributes, which alone hold them in torch 2.11 (cap in bytes
    = MiB x 2**20; without arguments, 25 MiB after a first bucket of 1 MiB)."""
    config_class = getattr(ddp_module, "_BucketCapacityConfig", None)
    if config_class is not None:
        config = config_class.create(bucket_cap_mb=bucket_cap_mb, bucket_cap_mb_list=bucket_cap_mb_list,
                                     use_python_reducer=ddp._use_python_reducer)
        ddp._bucket_config = config
        ddp.bucket_bytes_cap = config.bucket_bytes_cap
        ddp.bucket_bytes_cap_list = list(config.per_bucket_bytes_caps)
        ddp.bucket_bytes_cap_default = config.first_bucket_bytes_cap < config.bucket_bytes_cap
        return
    mib = 1 << 20
    ddp.bucket_bytes_cap_list = [int(c * mib) for c in bucket_cap_mb_list or ()]
    ddp.bucket_bytes_cap_default = bucket_cap_mb is None and not bucket_cap_mb_list
    cap = max(bucket_cap_mb_list) if bucket_cap_mb_list else 25 if bucket_cap_mb is None else bucket_cap_mb
    ddp.bucket_bytes_cap = int(cap * mib)


def rebuild_reducer(ddp: torch.nn.Module, bucket_cap_mb: float | None,
                    bucket_cap_mb_list: Sequence[float] | None) -> None:
    """Replace ``ddp``'s reducer by the one DDP's constructor builds with these
    bucket arguments (see :func:`gdat.reducer.plan_switch.switch_buckets`)."""
    hooks = comm_hooks(ddp)
    ddp._remove_autograd_hooks()
    _set_bucket_caps(ddp, bucket_cap_mb, list(bucket_cap_mb_list) if bucket_cap_mb_list is not None else None)
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


def _convert_frame() -> Any:
    import torch._dynamo.convert_frame

    return torch._dynamo.convert_frame


def _pytree() -> Any:
    import torch.utils._pytree

    return torch.utils._pytree


def state_without_hooks(state: dict[str, Any], drop: Callable[[Callable[..., Any]], bool]) -> dict[str, Any]:
    """A DDP's pickled ``state`` (``__getstate__``) without the comm hooks for which
    ``drop(hook)`` holds."""
    return {**state, "_comm_hooks": [(hook, hook_state) for hook, hook_state in state.get("_comm_hooks", [])
                                     if not drop(hook)]}


def substitute_ddp_class(cls: type) -> None:
    """Make ``cls`` the ``DistributedDataParallel`` that ``torch.nn.parallel``, its
    ``distributed`` module and Dynamo name.  DDP's forward marks the DDP being run on
    the class its module names (``_active_ddp_module``), and Dynamo asks the class
    its own module imported whether a DDP is running, to split the compiled graph at
    bucket boundaries (DDPOptimizer): all must name the same class."""
    import torch.nn.parallel

    torch.nn.parallel.DistributedDataParallel = cls
    ddp_module.DistributedDataParallel = cls
    frame = _convert_frame()
    if hasattr(frame, "DistributedDataParallel"):
        frame.DistributedDataParallel = cls


def queue_backward_callback(fn: Callable[[], None]) -> None:
    """Call ``fn`` when autograd's engine finishes the backward now running."""
    torch.autograd.Variable._execution_engine.queue_callback(fn)


def output_tensors(output: Any) -> list[Any]:
    """The leaves of a forward's output (tensors among them), however nested."""
    return _pytree().tree_leaves(output)


def ddp_logging_data(ddp: torch.nn.Module) -> dict[str, Any]:
    """DDP's runtime logging data (``rebuilt_bucket_sizes``, ...)."""
    return ddp._get_ddp_logging_data()


def per_attempt_store(prefix: str) -> bool:
    """Wrap the store torchrun's ``env://`` rendezvous creates in a ``PrefixStore``
    named ``prefix``, where the rendezvous uses torchelastic's agent store; returns
    whether it did (``False`` also where this torch lacks the members)."""
    import importlib

    import torch.distributed as dist

    rendezvous = importlib.import_module("torch.distributed.rendezvous")  # the name is shadowed by a function
    uses_agent = getattr(rendezvous, "_torchelastic_use_agent_store", None)
    create = getattr(rendezvous, "_create_c10d_store", None)
    if not callable(uses_agent) or not callable(create) or not uses_agent():
        return False

    def per_attempt(*args: Any, **kwargs: Any) -> Any:
        return dist.PrefixStore(prefix, create(*args, **kwargs))

    rendezvous._create_c10d_store = per_attempt
    return True


def watch_runtime_logging(cls: type, notify: Callable[[Any], None]) -> None:
    """Make ``cls`` (a subclass of DDP) call ``notify(ddp)`` when the user sets the
    sample rate of DDP's runtime logging (``_set_ddp_runtime_logging_sample_rate``),
    before DDP sets it: the user then reads that logging, which a reducer rebuild
    restarts (its iteration count and sampled times belong to the reducer).  Nothing
    to watch where this torch has no such method."""
    name = "_set_ddp_runtime_logging_sample_rate"
    stock = getattr(STOCK_DDP, name, None)
    if not callable(stock):
        return

    def sample(ddp: torch.nn.Module, sample_rate: int) -> None:
        notify(ddp)
        stock(ddp, sample_rate)

    sample.__doc__ = stock.__doc__
    setattr(cls, name, sample)

