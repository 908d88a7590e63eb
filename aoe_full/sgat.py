"""SGAT: subgraph tuning.

The model graph is partitioned (:mod:`aoe_full.partition`).  For every distinct
subgraph (structural hash + input signature), in graph order: look it up in the
subgraph bank; on a hit (``REPEAT_TUNE`` off) use the stored strategy without
measuring; otherwise measure the subgraph's strategies in isolation on the
recorded activations, the ``opat`` one built from the operator bank's entries
for its operators, and record the verdict.

The whole model is one more item, tuned first (so the compile budget never
runs out before ``torch.compile`` of the whole model and the engines were
tried): its strategies are those of any subgraph.  Two tuned configurations
come out, the per-subgraph choices and the whole model's choice; the
whole-model gate measures both against the untuned model side by side and
delivers the fastest that beats it (:func:`aoe_full.pipeline.finish`).
"""
from __future__ import annotations

import time
from typing import Any

import torch

from aoe_full.bank import OPAT, SGAT, BankContext, decide
from aoe_full.choices import Choices, OpChoice, SubgraphChoice, identity_of
from aoe_full.operators import OpInstance, find_operators
from aoe_full.partition import WHOLE, Subgraph, get_path, partition, structure_hash, whole_graph
from aoe_full.pipeline import ItemReport, TuneConfig, TuningRun, complete, prepare
from aoe_full.progress import ProgressBar
from aoe_full.rewrite import ImplCache, make_op_dispatch, subgraph_functions
from aoe_full.signature import call_signature, describe, to_json
from aoe_full.strategies import DEFAULT, OP_STRATEGIES, SUBGRAPH_STRATEGIES, CompileBudget, subgraph_strategies
from aoe_full.tuner import diff_tensors, tune_item
from gdat.bank.store import KnowledgeBase, RepoSummary, key_id

__all__ = ["tune_subgraphs", "mutates_inputs"]


def mutates_inputs(sub: Subgraph, root: torch.nn.Module) -> bool:
    """Whether a subgraph may write into a tensor (an in-place method or function,
    an ``inplace=True`` argument or module, a mutable aten overload): then it is
    measured on fresh copies of its inputs for every call."""
    for n in sub.nodes:
        if n.kwargs.get("inplace") is True:
            return True
        if n.op == "call_method" and str(n.target).endswith("_") and not str(n.target).startswith("__"):
            return True
        if n.op == "call_module" and getattr(root.get_submodule(str(n.target)), "inplace", False):
            return True
        if n.op == "call_function":
            schema = getattr(n.target, "_schema", None)
            if schema is not None and schema.is_mutable:
                return True
            if getattr(n.target, "__name__", "").endswith("_"):
                return True
    return False


def _op_choices_inside(sub: Subgraph, ops: list[OpInstance], ctx: BankContext,
                       opat_kb: KnowledgeBase) -> list[OpChoice]:
    """The operator bank's non-default choices for the operators of ``sub``."""
    names = set(sub.node_names)
    found = []
    for op in ops:
        if op.node not in names:
            continue
        payload = opat_kb.get(ctx.key(OPAT, op.signature))
        if payload and payload.get("strategy", DEFAULT) in OP_STRATEGIES \
                and payload["strategy"] != DEFAULT:
            static = {k: v for k, v in op.signature.items() if k != "call"}
            found.append(OpChoice(op.node, identity_of(static), op.call_key, payload["strategy"]))
    return found


def tune_subgraphs(model: torch.nn.Module, inputs: list[torch.Tensor], arg_names: list[str],
                   cfg: TuneConfig, progress: ProgressBar | None = None) -> TuningRun:
    """Run SGAT on ``model`` (left unchanged) for the sample ``inputs``."""
    t0 = time.perf_counter()
    grad = cfg.scene == "train"
    work, cap, ctx = prepare(model, inputs, arg_names, cfg.scene)
    subs = partition(cap.graph, work)
    if len(subs) > 1:
        subs.insert(0, whole_graph(cap.graph, len(subs)))
    ops = find_operators(cap.graph, work, cap.values, grad)
    sg_kb = KnowledgeBase(cfg.bank_root, SGAT)
    opat_kb = KnowledgeBase(cfg.bank_root, OPAT)
    budget = CompileBudget(cfg.compile_budget_s)
    summary = RepoSummary()
    items: list[ItemReport] = []
    configurations = {"whole model": Choices(), "subgraphs": Choices()}
    groups: dict[str, list[tuple[Subgraph, str, tuple]]] = {}
    keys: dict[str, dict] = {}
    for sub in subs:
        structure = structure_hash(sub, work)
        with torch.set_grad_enabled(grad):
            sig = call_signature(tuple(cap.values[n.name] for n in sub.inputs), {})
        key = ctx.key(SGAT, {"structure": structure, "inputs": to_json(sig)})
        groups.setdefault(key_id(key), []).append((sub, structure, sig))
        keys[key_id(key)] = key
    if progress is not None:
        progress.set_total(len(groups) + 1)
    for kid, group in groups.items():
        sub, structure, sig = group[0]
        label = (f"subgraph {sub.owner or sub.first} ({len(sub.nodes)} nodes) "
                 f"{describe(sig)}").strip()
        inside = _op_choices_inside(sub, ops, ctx, opat_kb)
        outcome, strategy, measured, written, table = _tune_one(
            sg_kb, keys[kid], sub, inside, work, cap, cfg, budget, grad)
        summary.count(outcome)
        items.append(ItemReport(SGAT, kid, label, [s.first for s, _, _ in group], outcome,
                                strategy, measured, written, table))
        if strategy != DEFAULT:
            choices = configurations["whole model" if sub.owner == WHOLE else "subgraphs"]
            for s, st, sg in group:
                choices.subgraphs.append(SubgraphChoice(s.first, st, sg, strategy))
                if strategy == "opat":
                    choices.ops.extend(_op_choices_inside(s, ops, ctx, opat_kb))
        if progress is not None:
            progress.step(f"{outcome:<11} {label}")
    return complete(SGAT, model, configurations, inputs, arg_names, cfg, items, summary, t0,
                    budget.spent_s, progress)


def _tune_one(kb: KnowledgeBase, key: dict, sub: Subgraph, inside: list[OpChoice],
              work: torch.nn.Module, cap: Any, cfg: TuneConfig, budget: CompileBudget,
              grad: bool) -> tuple[str, str, bool, bool, dict]:
    """(outcome, strategy, measured, bank written, candidate table) for one subgraph."""
    stored = kb.get(key)
    if stored is not None and not cfg.repeat and stored.get("strategy") in SUBGRAPH_STRATEGIES:
        return "hit", str(stored["strategy"]), False, False, {}
    refs = tuple(get_path(work, p) for p in sub.refs)
    args = tuple(cap.values[n.name] for n in sub.inputs)
    nodes = {n.name: n for n in sub.nodes}
    cache = ImplCache()
    dispatch = {}
    for c in inside:
        table = {c.call_key: OP_STRATEGIES[c.strategy]}
        dispatch[c.node] = make_op_dispatch(nodes[c.node], table, c.identity, cache)
    functions = subgraph_functions(sub, dispatch)
    bases = {"*": functions["plain"]}
    if "opat" in functions:
        bases["opat"] = functions["opat"]
    strategies = subgraph_strategies(args, "opat" in functions, cfg.candidates)
    modules = [r for r in refs if isinstance(r, torch.nn.Module)]
    with torch.set_grad_enabled(grad):
        diff = diff_tensors(refs + args, modules)
    result = tune_item(strategies, bases, refs + args, {}, len(refs), diff, cfg.scene,
                       mutates_inputs(sub, work), cfg.measure, budget, f"sg{sub.index}")
    table = result.table()
    payload = {"strategy": result.winner, "label": f"{len(sub.nodes)} nodes",
               "candidates": table}
    d = decide(kb, key, result.winner, payload, result.beats)
    return d.outcome, d.strategy, True, d.written, table
