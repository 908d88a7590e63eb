"""SGAT's partition of a model graph into subgraphs, and subgraph functions.

**Partitioning rule.**  The call nodes of the graph, in execution order, are cut
into maximal runs of consecutive nodes such that

1. nodes inside a *user-defined block* stay together: a node's block is the
   outermost module on its module stack whose class is not part of ``torch.nn``
   and that is an element of a container (``blocks.0``, ``encoder.layer.3``: the
   repeated blocks of a model), or, on a stack with no such element, the
   outermost module whose class is not part of ``torch.nn`` (``embeddings``);
   consecutive nodes with the same block form one subgraph;
2. nodes in no user-defined block (the model's own forward, ``nn.Sequential``
   chains of ``torch.nn`` layers) are cut before every *anchor* operator: conv,
   linear, matmul, bmm, attention, or a ``torch.nn`` module with parameters that
   is not a normalisation (an embedding, an LSTM, a transformer layer).  So
   ``conv, bn, relu, conv, bn, relu`` gives two subgraphs ``conv, bn, relu``;
3. a run with only shape and indexing nodes (``view``, ``reshape``, ``permute``,
   ``getitem``, ``size``...) is merged into the run after it (the last one into
   the run before).

The rule reads only the graph and the module classes, never shapes or values, so
tuning, :func:`aoe_full.load_tuned` and :func:`aoe_full.apply_bank` cut the same
model the same way.

**Subgraph function.**  A subgraph becomes a standalone ``fx.GraphModule`` whose
arguments are first its *refs* (the modules it calls and the parameters/buffers
it reads, by attribute path) and then its *inputs* (values produced before it);
it returns the tuple of its values used after it.  It holds no state, so one
function serves every copy of the model.

**Structural hash.**  SHA-256 (24 hex digits) of a canonical description: each
ref's class, ``extra_repr`` and parameter shapes/dtypes (never values or names),
then each node's operation, target and arguments written as positions.  Two
blocks built alike hash alike; the sample input shapes are kept apart, in the
bank key.
"""
from __future__ import annotations

import builtins
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn

from aoe_full.operators import classify, get_path, invoke_module
from aoe_full.signature import module_config
from gdat.core.jsonio import digest

__all__ = ["Subgraph", "partition", "whole_graph", "WHOLE", "build_function", "structure_hash",
           "get_path"]

_ANCHOR_KINDS = {"conv", "linear", "matmul", "bmm", "attention"}
_SHAPE_METHODS = {"size", "dim", "view", "reshape", "flatten", "permute", "transpose",
                  "contiguous", "unsqueeze", "squeeze", "chunk", "split", "expand", "t",
                  "view_as", "expand_as", "unflatten"}
_SHAPE_FUNCTIONS: set[Any] = {builtins.getattr, operator.getitem, operator.floordiv,
                              torch.flatten, torch.reshape, torch.transpose, torch.permute,
                              torch.unsqueeze, torch.squeeze, torch.chunk, torch.split,
                              torch.t}
_aten = torch.ops.aten
_SHAPE_ATEN = {_aten.view.default, _aten.reshape.default, _aten.permute.default,
               _aten.transpose.int, _aten.unsqueeze.default, _aten.squeeze.dim,
               _aten.select.int, _aten.slice.Tensor, _aten.t.default, _aten.expand.default,
               _aten.flatten.using_ints, _aten.contiguous.default, _aten.chunk.default,
               _aten.split.Tensor, _aten.unflatten.int, _aten.sym_size.int}
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)


@dataclass
class Subgraph:
    """One subgraph: ``nodes`` of the model graph in order, the ``inputs`` it
    reads, the ``refs`` (attribute paths) it uses and the ``outputs`` used after it."""

    index: int
    nodes: list[fx.Node]
    owner: str | None
    inputs: list[fx.Node]
    refs: list[str]
    outputs: list[fx.Node]

    @property
    def first(self) -> str:
        return self.nodes[0].name

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]


def _class_name(cls: Any) -> str:
    if isinstance(cls, str):
        return cls
    return f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', '')}"


def _user_modules(node: fx.Node) -> list[str]:
    """Paths of the user-defined modules on a node's module stack, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = []
    for value in stack.values():
        path, cls = value if isinstance(value, tuple) else (None, value)
        if path and not _class_name(cls).startswith("torch.nn."):
            paths.append(str(path))
    return paths


def _is_element(path: str) -> bool:
    """Whether a module path names an element of a container (``layer.0``)."""
    last = path.replace("[", ".").rstrip("]").rsplit(".", 1)[-1]
    return last.isdigit()


def block_owner(node: fx.Node) -> str | None:
    """A node's user-defined block (``None``: none): the outermost user-defined
    module on its module stack that is an element of a container
    (``encoder.layer.3``), else the outermost user-defined module."""
    paths = _user_modules(node)
    elements = [p for p in paths if _is_element(p)]
    if elements:
        return elements[0]
    return paths[0] if paths else None


def _is_trivial(node: fx.Node, root: nn.Module) -> bool:
    if node.op == "call_method":
        return str(node.target) in _SHAPE_METHODS
    if node.op == "call_module":
        return str(node.target) == "_guards_fn"
    try:
        return node.target in _SHAPE_FUNCTIONS or node.target in _SHAPE_ATEN
    except TypeError:
        return False


def _is_anchor(node: fx.Node, root: nn.Module) -> bool:
    if classify(node, root) in _ANCHOR_KINDS:
        return True
    if node.op == "call_module" and str(node.target) != "_guards_fn":
        m = root.get_submodule(str(node.target))
        return (classify(node, root) is None and not isinstance(m, _NORMS)
                and any(True for _ in m.parameters()))
    return False


def _runs(graph: fx.Graph, root: nn.Module) -> list[tuple[str | None, list[fx.Node]]]:
    runs: list[tuple[str | None, list[fx.Node]]] = []
    for node in graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        owner = block_owner(node)
        if runs and runs[-1][0] == owner and (owner is not None or not _is_anchor(node, root)):
            runs[-1][1].append(node)
        else:
            runs.append((owner, [node]))
    merged: list[tuple[str | None, list[fx.Node]]] = []
    carry: list[fx.Node] = []
    for owner, nodes in runs:
        if all(_is_trivial(n, root) for n in nodes):
            carry.extend(nodes)
            continue
        merged.append((owner, carry + nodes))
        carry = []
    if carry:
        if merged:
            merged[-1][1].extend(carry)
        else:
            merged.append((None, carry))
    return merged


def _subgraph(index: int, owner: str | None, nodes: list[fx.Node]) -> Subgraph:
    members = set(nodes)
    inputs: list[fx.Node] = []
    refs: list[str] = []
    for n in nodes:
        if n.op == "call_module" and str(n.target) not in refs:
            refs.append(str(n.target))
        for a in n.all_input_nodes:
            if a.op == "get_attr":
                if str(a.target) not in refs:
                    refs.append(str(a.target))
            elif a not in members and a not in inputs:
                inputs.append(a)
    outputs = [n for n in nodes if any(u not in members for u in n.users)]
    return Subgraph(index, nodes, owner, inputs, refs, outputs)


def partition(graph: fx.Graph, root: nn.Module) -> list[Subgraph]:
    """The subgraphs of ``graph`` by the partitioning rule (module docstring)."""
    return [_subgraph(index, owner, nodes) for index, (owner, nodes) in enumerate(_runs(graph, root))]


#: The owner name of the whole-model subgraph.
WHOLE = "<whole model>"


def whole_graph(graph: fx.Graph, index: int) -> Subgraph:
    """Every call node of ``graph`` as one subgraph (the whole model: its inputs
    are the graph's placeholders, its outputs what the graph returns)."""
    nodes = [n for n in graph.nodes if n.op in ("call_module", "call_function", "call_method")]
    return _subgraph(index, WHOLE, nodes)


def build_function(sub: Subgraph, op_dispatch: dict[str, Callable[..., Any]] | None = None
                   ) -> fx.GraphModule:
    """The subgraph as a stateless module ``f(*refs, *inputs) -> tuple(outputs)``.
    ``op_dispatch``: node name -> callable replacing that operator node (called
    with the module first for a module op)."""
    op_dispatch = op_dispatch or {}
    g = fx.Graph()
    ref_nodes = {p: g.placeholder(f"ref{i}") for i, p in enumerate(sub.refs)}
    env: dict[fx.Node, fx.Node] = {n: g.placeholder(f"in{i}") for i, n in enumerate(sub.inputs)}

    def arg(a: fx.Node) -> fx.Node:
        return ref_nodes[str(a.target)] if a.op == "get_attr" else env[a]

    for n in sub.nodes:
        args = fx.map_arg(n.args, arg)
        kwargs = fx.map_arg(n.kwargs, arg)
        if n.op == "call_module":
            target = op_dispatch.get(n.name, invoke_module)
            env[n] = g.call_function(target, (ref_nodes[str(n.target)], *args), kwargs)
        elif n.name in op_dispatch:
            env[n] = g.call_function(op_dispatch[n.name], args, kwargs)
        else:
            env[n] = g.node_copy(n, arg)
    g.output(tuple(env[o] for o in sub.outputs))
    return fx.GraphModule(nn.Module(), g)


def _target_id(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"method:{node.target}"
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return f"aten:{t}"
    return f"function:{getattr(t, '__module__', '')}.{getattr(t, '__qualname__', str(t))}"


def structure_hash(sub: Subgraph, root: nn.Module) -> str:
    """The structural hash of a subgraph (module docstring)."""
    refs = []
    for p in sub.refs:
        obj = get_path(root, p)
        if isinstance(obj, nn.Module):
            refs.append(["module", module_config(obj)])
        elif isinstance(obj, torch.Tensor):
            refs.append(["tensor", list(obj.shape), str(obj.dtype),
                         isinstance(obj, nn.Parameter)])
        else:
            refs.append(["other", type(obj).__qualname__])
    position: dict[fx.Node, list[Any]] = {n: ["in", i] for i, n in enumerate(sub.inputs)}
    position.update({n: ["node", i] for i, n in enumerate(sub.nodes)})

    def enc(a: Any) -> Any:
        if isinstance(a, fx.Node):
            return ["ref", sub.refs.index(str(a.target))] if a.op == "get_attr" else position[a]
        if isinstance(a, (list, tuple)):
            return [enc(x) for x in a]
        if isinstance(a, dict):
            return {str(k): enc(v) for k, v in a.items()}
        if a is None or isinstance(a, (bool, int, float, str)):
            return a
        return str(a)

    nodes = []
    for n in sub.nodes:
        target = (["module", sub.refs.index(str(n.target))] if n.op == "call_module"
                  else _target_id(n))
        nodes.append([n.op, target, enc(n.args), enc(dict(n.kwargs))])
    desc = {"refs": refs, "inputs": len(sub.inputs), "nodes": nodes,
            "outputs": [position[o] for o in sub.outputs]}
    return digest(desc, 24)
