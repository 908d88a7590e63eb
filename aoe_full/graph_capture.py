"""Capturing a model as a torch.fx graph, and recording its activations.

:func:`trace` gives the graph whose attribute paths resolve on the model itself:

* a ``torch.fx.GraphModule`` (an exported program's ``.module()``) is used
  as it is: its graph is copied;
* any other module is traced with ``torch.fx``'s symbolic tracer, which keeps
  ``torch.nn`` modules as single ``call_module`` nodes and inlines user-defined
  modules.  Forward parameters that are not provided are traced at their default
  values.  Python control flow is evaluated at trace time, in the module's
  current training mode.

:func:`graphable` gives a module :func:`trace` can handle: the model itself when
torch.fx can trace it, else the module of its ``torch.export`` program
(non-strict, on the sample inputs, in the model's current training mode), whose
graph is made of aten operators.  Both failing is a :class:`TraceError`.  A
Hugging Face model whose ``config.use_cache`` is on (the default) is exported with
it off (:func:`_without_cache`): the key/value cache serves generation, a
training or inference step of the whole sequence never reads it, and torch.export
cannot return the cache object (``DynamicCache``) the model would add to its
outputs; the exported graph returns everything else.

:func:`record` runs the graph once on sample inputs and keeps a snapshot of every
node's output (tensors detached, same strides, same ``requires_grad``), which
is what operators and subgraphs are later measured on.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
import torch.fx as fx
from torch.utils._pytree import tree_map

from aoe_full.errors import ModelLoadError, TraceError, first_line
from gdat.errors import UsageError

__all__ = ["Capture", "trace", "record", "forward_arg_names", "check_input_names", "capture",
           "graphable", "CAPTURES"]

#: How a model became a graph: torch.fx symbolic tracing, or torch.export.
CAPTURES = ("fx", "export")


@dataclass
class Capture:
    """A traced model: ``graph`` resolves attribute paths on ``root``.

    ``values`` maps node names to snapshots of their outputs (empty when the
    graph was traced without running it)."""

    root: torch.nn.Module
    graph: fx.Graph
    arg_names: tuple[str, ...]
    training: bool
    values: dict[str, Any] = field(default_factory=dict)


def forward_arg_names(model: torch.nn.Module) -> list[str]:
    """Names of the model's forward arguments, in order."""
    if isinstance(model, fx.GraphModule):
        return [str(n.target).lstrip("*") for n in model.graph.nodes if n.op == "placeholder"]
    return [p.name for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_input_names(model: torch.nn.Module, names: list[str]) -> None:
    """``--input_shape`` must name the first forward arguments in order, and the
    others must have defaults (all are needed by an fx.GraphModule)."""
    expected = forward_arg_names(model)
    if names != expected[:len(names)]:
        raise UsageError(f"--input_shape names {', '.join(names)} but the model's forward "
                         f"takes {', '.join(expected) or 'no arguments'} (in this order)")
    if isinstance(model, fx.GraphModule):
        missing = expected[len(names):]
    else:
        params = inspect.signature(model.forward).parameters
        missing = [n for n in expected[len(names):] if params[n].default is inspect.Parameter.empty]
    if missing:
        raise UsageError(f"--input_shape lacks the model's forward argument(s) {', '.join(missing)}")


def _copy_graph(graph: fx.Graph) -> fx.Graph:
    new = fx.Graph()
    val_map: dict[fx.Node, fx.Node] = {}
    out = new.graph_copy(graph, val_map)
    new.output(out)
    new._codegen = copy.deepcopy(graph._codegen)
    return new


def trace(root: torch.nn.Module, provided: Iterable[str] | None = None) -> tuple[fx.Graph, tuple[str, ...]]:
    """The fx graph of ``root`` and the names of the arguments it takes.

    ``provided``: the forward arguments that will be passed; the others are
    traced at their defaults (``None`` means only those without a default)."""
    if isinstance(root, fx.GraphModule):
        graph = _copy_graph(root.graph)
        return graph, tuple(forward_arg_names(root))
    params = inspect.signature(root.forward).parameters
    given = set(provided) if provided is not None else {
        n for n, p in params.items() if p.default is inspect.Parameter.empty}
    concrete = {n: p.default for n, p in params.items()
                if n not in given and p.default is not inspect.Parameter.empty}
    try:
        graph = fx.Tracer().trace(root, concrete_args=concrete or None)
    except Exception as e:
        raise TraceError(f"{type(root).__name__} cannot be traced by torch.fx "
                         f"({first_line(e)})") from None
    names = tuple(n for n in params if n not in concrete)
    return graph, names


def graphable(model: torch.nn.Module, inputs: list[torch.Tensor], arg_names: list[str]
              ) -> tuple[torch.nn.Module, str]:
    """``(module, capture)``: ``model`` itself and ``"fx"`` when torch.fx traces
    it, else its ``torch.export`` module (non-strict, in the current training
    mode) and ``"export"``.  Raises :class:`TraceError` naming both failures."""
    try:
        trace(model, arg_names)
        return model, "fx"
    except TraceError as e:
        fx_error = str(e)
    try:
        with _without_cache(model):
            exported = torch.export.export(model, tuple(inputs), strict=False).module()
    except Exception as e:
        raise TraceError(f"{fx_error}; torch.export failed too ({first_line(e)})") from None
    return exported, "export"


@contextlib.contextmanager
def _without_cache(model: torch.nn.Module) -> Iterator[None]:
    """``model.config.use_cache`` off while the block runs, where it is on (module docstring)."""
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", None) is not True:
        yield
        return
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = True


def _snapshot(value: Any) -> Any:
    def one(v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return v
        d = v.detach()
        try:
            snap = torch.empty_strided(d.shape, d.stride(), dtype=d.dtype, device=d.device)
            snap.copy_(d)
        except RuntimeError:  # overlapping or expanded memory: keep the values only
            snap = d.clone()
        return snap.requires_grad_(v.requires_grad and v.is_floating_point())
    return tree_map(one, value)


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = _snapshot(out)
        return out


def record(root: torch.nn.Module, graph: fx.Graph, inputs: list[torch.Tensor],
           grad: bool) -> dict[str, Any]:
    """Run ``graph`` on ``root`` once and return every node's output snapshot.
    ``root``'s buffers (e.g. batch-norm statistics) are updated as by one call."""
    gm = fx.GraphModule(root, graph)
    rec = _Recorder(gm)
    try:
        with torch.set_grad_enabled(grad):
            rec.run(*inputs)
    except Exception as e:
        raise ModelLoadError(f"running the model on the sample inputs failed: "
                             f"{type(e).__name__}: {e}") from None
    return rec.values


def capture(root: torch.nn.Module, inputs: list[torch.Tensor], arg_names: list[str],
            grad: bool) -> Capture:
    """Trace ``root`` for the given forward arguments and record its activations."""
    graph, names = trace(root, arg_names)
    values = record(root, graph, inputs, grad)
    return Capture(root=root, graph=graph, arg_names=names, training=root.training,
                   values=values)
