"""What gdat reads from a live ``DistributedDataParallel`` instance, or from the
arguments one is about to be built with (:func:`ddp_options`, :func:`options_group`).

DDP's reducer numbers the trainable parameters by walking
``module.named_modules()`` and each module's own parameters, skipping those that do
not require grad, those in ``parameters_to_ignore`` and repeats of a shared
parameter.  :func:`reducer_parameters` reproduces that numbering (the tests check it
against the parameters DDP hands to a comm hook); every parameter index in gdat is
an index into this list.
"""
from __future__ import annotations

import inspect
import weakref
from typing import Any

import torch
import torch.distributed as dist

from gdat.core.layout import FIXED_ORDER, READY_ORDER, ParamInfo, params_of
from gdat.reducer.torch_internals import STOCK_DDP, ignored_parameter_names

__all__ = ["reducer_parameters", "param_infos", "process_group_of", "bucket_order_of", "WeakAttribute", "ddp_options",
           "options_group"]


def reducer_parameters(
    module: torch.nn.Module, ignore: set[str] | None = None
) -> list[tuple[str, torch.nn.Parameter]]:
    """``(name, parameter)`` in the order of DDP's reducer for ``module`` (a DDP
    instance or the module it wraps; ``ignore`` defaults to DDP's
    ``parameters_to_ignore`` or the names DDP is told to ignore on the module)."""
    if hasattr(module, "parameters_to_ignore") and hasattr(module, "module"):
        ignore = module.parameters_to_ignore if ignore is None else ignore
        module = module.module
    if ignore is None:
        ignore = ignored_parameter_names(module)
    seen: set[int] = set()
    out = []
    for mname, sub in module.named_modules():
        for pname, p in sub.named_parameters(recurse=False):
            if not p.requires_grad or f"{mname}.{pname}" in ignore or id(p) in seen:
                continue
            seen.add(id(p))
            out.append((f"{mname}.{pname}" if mname else pname, p))
    return out


def param_infos(module: torch.nn.Module) -> tuple[ParamInfo, ...]:
    """:class:`ParamInfo` of every parameter DDP reduces, in reducer order."""
    return params_of(reducer_parameters(module))


def process_group_of(ddp: torch.nn.Module):
    """The process group DDP reduces over."""
    return getattr(ddp, "process_group", None) or dist.group.WORLD


def bucket_order_of(ddp: torch.nn.Module) -> str:
    """The bucket-order rule of a DDP (:mod:`gdat.core.layout`): ``"fixed"`` when it
    finds unused parameters without a static graph (it then never rebuilds its
    buckets), else ``"ready"``."""
    fixed = getattr(ddp, "find_unused_parameters", False) and not getattr(ddp, "static_graph", False)
    return FIXED_ORDER if fixed else READY_ORDER


class WeakAttribute:
    """An attribute that holds its value by weak reference.

    gdat's controllers, recorders and sessions refer back to the DDP they serve this
    way: DDP refers to them, and a strong reference back would form a cycle, so
    ``del ddp`` would no longer free DDP (and its process group) at once.
    Reading the attribute after the DDP is gone raises :class:`ReferenceError`.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__[self.name]()
        if value is None:
            raise ReferenceError(f"the object behind {type(obj).__name__}.{self.name} no longer exists")
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = weakref.ref(value)


def ddp_options(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every argument of stock DDP's constructor for ``DDP(module, *args, **kwargs)``,
    defaults filled in."""
    bound = inspect.signature(STOCK_DDP.__init__).bind(None, module, *args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def options_group(options: dict[str, Any]) -> Any:
    """The process group a DDP built with ``options`` (:func:`ddp_options`) uses."""
    if options.get("device_mesh") is not None:
        return options["device_mesh"].get_group(mesh_dim=0)
    return options.get("process_group") or dist.group.WORLD
