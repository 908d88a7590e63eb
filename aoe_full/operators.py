"""Operator instances of a captured graph: which nodes OPAT can tune.

A node is a tunable operator when it is one of these, by *kind*:

=========== ==================================================================
kind        nodes
=========== ==================================================================
conv        ``nn.Conv1d/2d/3d``; ``F.conv1d/2d/3d``; ``aten.conv1d/2d/3d``
linear      ``nn.Linear``; ``F.linear``; ``aten.linear``, ``aten.addmm``
matmul      ``torch.matmul``, ``@``, ``Tensor.matmul``; ``aten.matmul``, ``aten.mm``
bmm         ``torch.bmm``, ``Tensor.bmm``; ``aten.bmm``
norm        ``nn.LayerNorm``, ``nn.BatchNorm1d/2d/3d``, ``nn.GroupNorm``,
            ``nn.RMSNorm``; ``F.layer_norm/group_norm/rms_norm``; the aten ones
softmax     ``nn.Softmax``; ``F.softmax``, ``torch.softmax``, ``Tensor.softmax``;
            ``aten.softmax``, ``aten._softmax``
attention   ``nn.MultiheadAttention``; ``F.scaled_dot_product_attention``; aten's
=========== ==================================================================

Modules match by exact class (a subclass may change ``forward``).  Random
operators (attention with dropout while training) are never tuned: no candidate
could be checked against them.

An operator's *static identity* (target and, for a module, its configuration)
and its *call signature* (argument signatures, grad mode, module state) together
are its bank signature; operators with equal signatures are tuned once.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from aoe_full.signature import call_signature, module_config, module_state, to_json

__all__ = ["KINDS", "OpInstance", "classify", "static_identity", "find_operators", "tunable_nodes",
           "node_target_name", "base_callable", "invoke_module", "get_path"]

KINDS = ("conv", "linear", "matmul", "bmm", "norm", "softmax", "attention")

_MODULES: dict[type, str] = {
    nn.Conv1d: "conv", nn.Conv2d: "conv", nn.Conv3d: "conv", nn.Linear: "linear",
    nn.LayerNorm: "norm", nn.BatchNorm1d: "norm", nn.BatchNorm2d: "norm",
    nn.BatchNorm3d: "norm", nn.GroupNorm: "norm", nn.RMSNorm: "norm",
    nn.Softmax: "softmax", nn.MultiheadAttention: "attention",
}
_FUNCTIONS: dict[Any, str] = {
    F.conv1d: "conv", F.conv2d: "conv", F.conv3d: "conv", F.linear: "linear",
    torch.matmul: "matmul", operator.matmul: "matmul", torch.bmm: "bmm",
    F.layer_norm: "norm", F.group_norm: "norm", F.rms_norm: "norm",
    F.softmax: "softmax", torch.softmax: "softmax",
    F.scaled_dot_product_attention: "attention",
}
_METHODS = {"matmul": "matmul", "bmm": "bmm", "softmax": "softmax"}
_aten = torch.ops.aten
_ATEN: dict[Any, str] = {
    _aten.conv1d.default: "conv", _aten.conv2d.default: "conv", _aten.conv3d.default: "conv",
    _aten.linear.default: "linear", _aten.addmm.default: "linear",
    _aten.matmul.default: "matmul", _aten.mm.default: "matmul", _aten.bmm.default: "bmm",
    _aten.layer_norm.default: "norm", _aten.group_norm.default: "norm",
    _aten.softmax.int: "softmax", _aten._softmax.default: "softmax",
    _aten.scaled_dot_product_attention.default: "attention",
}


def invoke_module(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """Call a module (hooks included): the default implementation of a module op."""
    return module(*args, **kwargs)


def _call_method(name: str) -> Callable[..., Any]:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, name)(*args, **kwargs)
    call.__name__ = f"Tensor_{name}"
    return call


_METHOD_CALLS = {name: _call_method(name) for name in _METHODS}


def node_target_name(node: fx.Node, root: nn.Module) -> str:
    """A readable name of what a node calls: ``Conv2d``, ``softmax``, ``aten.mm.default``."""
    if node.op == "call_module":
        return type(root.get_submodule(str(node.target))).__name__
    if node.op == "call_method":
        return str(node.target)
    if isinstance(node.target, torch._ops.OpOverload):
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def classify(node: fx.Node, root: nn.Module) -> str | None:
    """The operator kind of a node, or ``None`` when OPAT does not tune it."""
    if node.op == "call_module":
        return _MODULES.get(type(root.get_submodule(str(node.target))))
    if node.op == "call_method":
        return _METHODS.get(str(node.target))
    if node.op == "call_function":
        try:
            return _FUNCTIONS.get(node.target) or _ATEN.get(node.target)
        except TypeError:  # unhashable target
            return None
    return None


def static_identity(node: fx.Node, root: nn.Module) -> dict[str, Any]:
    """What a node calls, independent of its arguments (JSON-able)."""
    if node.op == "call_module":
        return {"target": "module", "config": module_config(root.get_submodule(str(node.target)))}
    if node.op == "call_method":
        return {"target": f"method:Tensor.{node.target}"}
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return {"target": f"aten:{t}"}
    return {"target": f"function:{getattr(t, '__module__', '')}.{getattr(t, '__qualname__', str(t))}"}


def base_callable(node: fx.Node) -> Callable[..., Any]:
    """The default implementation of a node's call.  For a module op the module is
    passed as the first argument."""
    if node.op == "call_module":
        return invoke_module
    if node.op == "call_method":
        return _METHOD_CALLS[str(node.target)]
    return node.target  # type: ignore[return-value]


def _is_random(node: fx.Node, root: nn.Module, args: tuple, kwargs: dict, training: bool) -> bool:
    if node.op == "call_module":
        m = root.get_submodule(str(node.target))
        return isinstance(m, nn.MultiheadAttention) and m.dropout > 0 and training
    if classify(node, root) == "attention":
        p = kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0)
        return bool(p)
    return False


@dataclass(frozen=True)
class OpInstance:
    """One tunable operator node.

    ``call_key``: the run-time dispatch key (:func:`call_key`), ``signature``: the
    JSON form of static identity + call key that keys the bank."""

    node: str
    kind: str
    op_type: str
    module_path: str | None
    call_key: tuple
    signature: dict[str, Any]


def resolve_args(node: fx.Node, values: dict[str, Any], root: nn.Module) -> tuple[tuple, dict]:
    """A node's arguments with recorded values in place of nodes (get_attr nodes
    resolve on ``root``); a module op gets its module first."""
    def value(a: Any) -> Any:
        if isinstance(a, fx.Node):
            if a.op == "get_attr":
                return get_path(root, str(a.target))
            return values[a.name]
        return a
    args = tuple(fx.node.map_aggregate(a, value) for a in node.args)
    kwargs = {k: fx.node.map_aggregate(v, value) for k, v in node.kwargs.items()}
    if node.op == "call_module":
        args = (root.get_submodule(str(node.target)),) + args
    return args, kwargs


def get_path(root: nn.Module, path: str) -> Any:
    """The attribute at a dotted path below ``root``."""
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def call_key(args: tuple, kwargs: dict, module_op: bool) -> tuple:
    """The run-time key of a call: for a module op, the module's state and the
    signature of the other arguments; otherwise the signature of all arguments."""
    if module_op:
        return (module_state(args[0]), call_signature(args[1:], kwargs))
    return (None, call_signature(args, kwargs))


def find_operators(graph: fx.Graph, root: nn.Module, values: dict[str, Any],
                   grad: bool) -> list[OpInstance]:
    """Every tunable operator node of ``graph`` with its signature, in graph order."""
    found: list[OpInstance] = []
    for node in graph.nodes:
        kind = classify(node, root)
        if kind is None or node.name not in values:
            continue
        args, kwargs = resolve_args(node, values, root)
        if _is_random(node, root, args, kwargs, root.training):
            continue
        with torch.set_grad_enabled(grad):
            key = call_key(args, kwargs, node.op == "call_module")
        found.append(OpInstance(
            node=node.name, kind=kind, op_type=node_target_name(node, root),
            module_path=str(node.target) if node.op == "call_module" else None,
            call_key=key, signature={"kind": kind, **static_identity(node, root),
                                     "call": to_json(key)}))
    return found


def tunable_nodes(graph: fx.Graph, root: nn.Module) -> list[tuple[str, str | None, str, str]]:
    """``(node name, module path, kind, op type)`` of every node OPAT could tune
    (without running the model)."""
    out = []
    for node in graph.nodes:
        kind = classify(node, root)
        if kind is not None:
            out.append((node.name, str(node.target) if node.op == "call_module" else None,
                        kind, node_target_name(node, root)))
    return out
