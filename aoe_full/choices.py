"""Chosen strategies as plain data, and applying them to a model.

A tuning run, a tuned-model file and :func:`aoe_full.apply_bank` all end in a
:class:`Choices`: per operator node and per subgraph, which strategy to run for
which call key.  :func:`apply_choices` traces the model, finds those nodes and
subgraphs again (node names and the partition are deterministic for a given
model class), checks each subgraph's structural hash, and installs dispatchers
(:mod:`aoe_full.rewrite`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from aoe_full.errors import TunedModelError
from aoe_full.graph_capture import trace
from aoe_full.partition import partition, structure_hash, whole_graph
from aoe_full.rewrite import ImplCache, OpDispatch, SubgraphDispatch, install, make_op_dispatch, subgraph_functions
from aoe_full.signature import from_json, to_json
from aoe_full.strategies import OP_STRATEGIES, SUBGRAPH_STRATEGIES
from gdat.core.jsonio import digest

__all__ = ["OpChoice", "SubgraphChoice", "Choices", "apply_choices", "identity_of"]


def identity_of(static: dict[str, Any]) -> str:
    """A short stable id of an operator's static identity (16 hex digits)."""
    return digest(static, 16)


@dataclass(frozen=True)
class OpChoice:
    """Run operator ``node`` with ``strategy`` when its call key is ``call_key``."""

    node: str
    identity: str
    call_key: tuple
    strategy: str

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "identity": self.identity,
                "call_key": to_json(self.call_key), "strategy": self.strategy}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "OpChoice":
        return OpChoice(str(d["node"]), str(d["identity"]), from_json(d["call_key"]),
                        str(d["strategy"]))


@dataclass(frozen=True)
class SubgraphChoice:
    """Run the subgraph starting at node ``first`` (structural hash ``structure``)
    with ``strategy`` when its inputs' call key is ``call_key``."""

    first: str
    structure: str
    call_key: tuple
    strategy: str

    def to_dict(self) -> dict[str, Any]:
        return {"first": self.first, "structure": self.structure,
                "call_key": to_json(self.call_key), "strategy": self.strategy}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "SubgraphChoice":
        return SubgraphChoice(str(d["first"]), str(d["structure"]), from_json(d["call_key"]),
                              str(d["strategy"]))


@dataclass
class Choices:
    """Operator and subgraph choices for one model.  ``miss``: what a tuned
    subgraph runs for a call key it has no choice for: ``"plain"`` (as written)
    or ``"opat"`` (with its operators' choices)."""

    ops: list[OpChoice] = field(default_factory=list)
    subgraphs: list[SubgraphChoice] = field(default_factory=list)
    miss: str = "plain"

    def __bool__(self) -> bool:
        return bool(self.ops or self.subgraphs)

    def to_dict(self) -> dict[str, Any]:
        return {"ops": [c.to_dict() for c in self.ops],
                "subgraphs": [c.to_dict() for c in self.subgraphs], "miss": self.miss}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Choices":
        return Choices([OpChoice.from_dict(c) for c in d.get("ops", [])],
                       [SubgraphChoice.from_dict(c) for c in d.get("subgraphs", [])],
                       str(d.get("miss", "plain")))


def _strategy(table: dict[str, Any], name: str, what: str) -> Any:
    if name not in table:
        raise TunedModelError(f"unknown {what} strategy {name!r}")
    return table[name]


def apply_choices(root: torch.nn.Module, choices: Choices,
                  arg_names: list[str] | None = None) -> dict[str, Any]:
    """Install ``choices`` into ``root`` in place; returns a summary of what was
    installed.  Raises :class:`TunedModelError` when a named node or subgraph is
    not in the model's graph or its structure changed.  Empty choices leave
    ``root`` untouched."""
    if not choices:
        return {"ops": [], "subgraphs": []}
    graph, names = trace(root, arg_names)
    nodes = {n.name: n for n in graph.nodes}
    cache = ImplCache()
    op_tables: dict[str, dict[Any, Any]] = {}
    op_ids: dict[str, str] = {}
    for c in choices.ops:
        if c.node not in nodes:
            raise TunedModelError(f"operator node {c.node!r} is not in the model's graph")
        op_tables.setdefault(c.node, {})[c.call_key] = _strategy(OP_STRATEGIES, c.strategy, "operator")
        op_ids[c.node] = c.identity
    dispatch: dict[str, OpDispatch] = {
        name: make_op_dispatch(nodes[name], table, op_ids[name], cache)
        for name, table in op_tables.items()}
    sub_tables: dict[tuple[str, str], dict[Any, Any]] = {}
    for c in choices.subgraphs:
        sub_tables.setdefault((c.first, c.structure), {})[c.call_key] = _strategy(
            SUBGRAPH_STRATEGIES, c.strategy, "subgraph")
    installed_subs = []
    inside: set[str] = set()
    whole_model = False
    if sub_tables:
        subs = partition(graph, root)
        by_key = {(s.first, structure_hash(s, root)): s for s in subs}
        whole = whole_graph(graph, len(subs))
        whole_key = (whole.first, structure_hash(whole, root))
        if whole_key in sub_tables and whole_key not in by_key:
            # the whole model as one subgraph replaces every other choice
            sub_tables = {whole_key: sub_tables[whole_key]}
            dispatch = {}
            by_key = {whole_key: whole}
            whole_model = True
        for (first, structure), table in sub_tables.items():
            sub = by_key.get((first, structure))
            if sub is None:
                raise TunedModelError(f"subgraph starting at {first!r} is not in the model's "
                                      "graph or its structure changed")
            functions = subgraph_functions(sub, dispatch)
            miss = choices.miss if choices.miss in functions else "plain"
            installed_subs.append((sub, SubgraphDispatch(functions, len(sub.refs), table,
                                                         structure, cache, miss)))
            inside.update(sub.node_names)
    outside = {n: d for n, d in dispatch.items() if n not in inside}
    applied = {"ops": [] if whole_model else sorted(op_tables), "subgraphs": sorted(f for f, _ in sub_tables),
               "whole_model": whole_model}
    install(root, graph, names, root.training, outside, installed_subs, applied)
    return applied
