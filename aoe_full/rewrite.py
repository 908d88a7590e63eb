"""Installing chosen strategies into a model, in place.

The model's graph (from :func:`aoe_full.graph_capture.trace`) is rewritten:

* a tuned operator node becomes a call of an :class:`OpDispatch` with the same
  arguments (a module op gets its module first, through a ``get_attr`` node);
* a tuned subgraph's nodes become one call of a :class:`SubgraphDispatch` with
  the subgraph's refs and inputs, followed by ``getitem`` for each output.

The code fx generates for that graph reads every module and parameter through
``self``, so it is bound to the model itself as an instance attribute
``forward``: the model object, its parameters and its ``state_dict()`` keys stay
the same, and ``copy.deepcopy`` of the model binds the copy to its own
parameters.  The tuned forward falls back to the class's own forward when the
model's training flag differs from the one it was traced in or when it is called
with arguments the trace did not take, so it never computes something else.

A dispatcher looks the run-time call key (argument shapes, dtypes, strides,
``requires_grad``, grad mode, module state) up in its table of chosen
strategies; a key it does not know runs the default.  Implementations are built
on first use and shared, through an :class:`ImplCache`, by all dispatchers of one
install with the same strategy and signature.
"""
from __future__ import annotations

import operator
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx

from aoe_full.operators import base_callable, call_key
from aoe_full.partition import Subgraph, build_function
from aoe_full.signature import call_signature
from aoe_full.strategies import Strategy

__all__ = ["ImplCache", "OpDispatch", "SubgraphDispatch", "install", "is_tuned", "TunedForward",
           "make_op_dispatch"]


class ImplCache:
    """Built implementations, keyed by (what, strategy, call key)."""

    def __init__(self) -> None:
        self._impls: dict[Any, Callable[..., Any]] = {}

    def get(self, key: Any, build: Callable[[], Callable[..., Any]]) -> Callable[..., Any]:
        impl = self._impls.get(key)
        if impl is None:
            impl = self._impls[key] = build()
        return impl


class OpDispatch:
    """Runs one operator node with the strategy its table chooses for the call."""

    def __init__(self, base: Callable[..., Any], table: dict[Any, Strategy], identity: str,
                 module_op: bool, cache: ImplCache) -> None:
        self.base = base
        self.table = table
        self.identity = identity
        self.module_op = module_op
        self.cache = cache
        self._resolved: dict[Any, Callable[..., Any]] = {}
        self.__name__ = f"aoe_op_{identity}"  # how fx names the call in generated code

    def _resolve(self, key: Any) -> Callable[..., Any]:
        strategy = self.table.get(key)
        if strategy is None:
            impl = self.base
        else:
            skip = 1 if self.module_op else 0
            impl = self.cache.get((self.identity, strategy.name, key),
                                  lambda: strategy.build(self.base, skip, self.identity))
        self._resolved[key] = impl
        return impl

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = call_key(args, kwargs, self.module_op)
        impl = self._resolved.get(key) or self._resolve(key)
        return impl(*args, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> "OpDispatch":
        return self  # holds no model state; shared by copies of the model


class SubgraphDispatch:
    """Runs one subgraph with the strategy its table chooses for the call.

    ``functions``: ``"plain"`` (the subgraph as written) and, when the operator
    bank has choices inside it, ``"opat"``; ``miss`` names the one to run for a
    call key the table does not know."""

    def __init__(self, functions: dict[str, Callable[..., Any]], n_refs: int,
                 table: dict[Any, Strategy], identity: str, cache: ImplCache,
                 miss: str = "plain") -> None:
        self.functions = functions
        self.n_refs = n_refs
        self.table = table
        self.identity = identity
        self.cache = cache
        self.miss = miss
        self._resolved: dict[Any, Callable[..., Any]] = {}
        self.__name__ = f"aoe_subgraph_{identity}"

    def _resolve(self, key: Any) -> Callable[..., Any]:
        strategy = self.table.get(key)
        if strategy is None:
            impl = self.functions[self.miss]
        else:
            base = self.functions["opat" if strategy.name == "opat" else "plain"]
            impl = self.cache.get((self.identity, strategy.name, key),
                                  lambda: strategy.build(base, self.n_refs, self.identity))
        self._resolved[key] = impl
        return impl

    def __call__(self, *args: Any) -> Any:
        key = call_signature(args[self.n_refs:], {})
        impl = self._resolved.get(key) or self._resolve(key)
        return impl(*args)

    def __deepcopy__(self, memo: dict[int, Any]) -> "SubgraphDispatch":
        return self


def make_op_dispatch(node: fx.Node, table: dict[Any, Strategy], identity: str,
                     cache: ImplCache) -> OpDispatch:
    """The dispatcher for one operator node of a graph."""
    return OpDispatch(base_callable(node), table, identity, node.op == "call_module", cache)


@dataclass
class TunedForward:
    """What an installed model runs: the generated forward and when it applies.
    ``applied``: a summary of what was installed (for reports and tests)."""

    fn: Callable[..., Any]
    training: bool
    arg_names: tuple[str, ...]
    applied: dict[str, Any] = field(default_factory=dict)

    def accepts(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        if len(args) > len(self.arg_names):
            return False
        return all(k in self.arg_names[len(args):] for k in kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> "TunedForward":
        return self


def _tuned_forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    tuned: TunedForward = self.__dict__["_aoe_tuning"]
    if self.training != tuned.training or not tuned.accepts(args, kwargs):
        return type(self).forward(self, *args, **kwargs)
    return tuned.fn(self, *args, **kwargs)


def is_tuned(module: torch.nn.Module) -> bool:
    """Whether strategies have been installed into ``module``."""
    return "_aoe_tuning" in module.__dict__


def _replace_op(graph: fx.Graph, node: fx.Node, dispatch: OpDispatch) -> None:
    with graph.inserting_before(node):
        args = node.args
        if node.op == "call_module":
            args = (graph.get_attr(str(node.target)),) + tuple(args)
        new = graph.call_function(dispatch, tuple(args), dict(node.kwargs))
    node.replace_all_uses_with(new)
    graph.erase_node(node)


def _replace_subgraph(graph: fx.Graph, sub: Subgraph, dispatch: SubgraphDispatch,
                      replaced: dict[fx.Node, fx.Node]) -> None:
    """Replace ``sub`` by one dispatcher call; ``replaced`` maps outputs of
    subgraphs replaced before to the nodes that now stand for them."""
    members = set(sub.nodes)
    inputs = tuple(replaced.get(n, n) for n in sub.inputs)
    with graph.inserting_before(sub.nodes[0]):
        refs = [graph.get_attr(p) for p in sub.refs]
        call = graph.call_function(dispatch, tuple(refs) + inputs)
        outs = [graph.call_function(operator.getitem, (call, i)) for i in range(len(sub.outputs))]
    for old, new in zip(sub.outputs, outs):
        old.replace_all_uses_with(new, delete_user_cb=lambda user: user not in members)
        replaced[old] = new
    for n in reversed(sub.nodes):
        graph.erase_node(n)


def install(root: torch.nn.Module, graph: fx.Graph, arg_names: tuple[str, ...], training: bool,
            ops: dict[str, OpDispatch], subgraphs: list[tuple[Subgraph, SubgraphDispatch]],
            applied: dict[str, Any]) -> None:
    """Rewrite ``graph`` (consumed) with the given dispatchers and bind the result
    to ``root`` as its forward.  ``ops``: node name -> dispatcher, for nodes
    outside the rewritten subgraphs."""
    replaced: dict[fx.Node, fx.Node] = {}
    for sub, dispatch in subgraphs:
        _replace_subgraph(graph, sub, dispatch, replaced)
    for node in list(graph.nodes):
        if node.name in ops:
            _replace_op(graph, node, ops[node.name])
    for node in list(graph.nodes):
        if node.op == "get_attr" and not node.users:
            graph.erase_node(node)
    graph.lint()
    gm = fx.GraphModule(root, graph)
    fn = type(gm).forward
    root.__dict__["_aoe_tuning"] = TunedForward(fn, training, arg_names, applied)
    root.__dict__["forward"] = types.MethodType(_tuned_forward, root)


def subgraph_functions(sub: Subgraph, op_dispatch: dict[str, OpDispatch]) -> dict[str, Callable[..., Any]]:
    """The plain function of a subgraph and, when some of its operators have
    dispatchers, the function with them (``"opat"``)."""
    plain = build_function(sub)
    functions: dict[str, Callable[..., Any]] = {"plain": plain.forward}
    inside = {n: d for n, d in op_dispatch.items() if n in set(sub.node_names)}
    if inside:
        functions["opat"] = build_function(sub, dict(inside)).forward
    return functions
