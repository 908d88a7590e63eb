"""OPAT: operator tuning.

For every distinct operator signature of the model (:mod:`aoe_full.operators`),
in graph order: look it up in the operator bank; on a hit (``REPEAT_TUNE`` off)
use the stored strategy without measuring; otherwise tune it in isolation on the
recorded activations (:func:`aoe_full.tuner.tune_item`) and record the verdict
(:func:`aoe_full.bank.decide`).  Then the tuned model is built with the
choices, and it and the untuned model are measured side by side.
"""
from __future__ import annotations

import time

import torch

from aoe_full.bank import OPAT, BankContext, decide
from aoe_full.choices import Choices, OpChoice, identity_of
from aoe_full.operators import OpInstance, base_callable, find_operators, resolve_args
from aoe_full.pipeline import ItemReport, TuneConfig, TuningRun, complete, prepare
from aoe_full.progress import ProgressBar
from aoe_full.signature import describe
from aoe_full.strategies import DEFAULT, OP_STRATEGIES, CompileBudget, op_strategies
from aoe_full.tuner import diff_tensors, tune_item
from gdat.bank.store import KnowledgeBase, RepoSummary, key_id

__all__ = ["tune_operators", "selected"]


def selected(op: OpInstance, cfg: TuneConfig) -> bool:
    """The ``--tune_ops_file`` filter: the union of names (node name or module
    path) and types (kind or class/function name), case-insensitive for types."""
    if cfg.select_names is None and cfg.select_types is None:
        return True
    names = cfg.select_names or frozenset()
    types = {t.lower() for t in (cfg.select_types or frozenset())}
    return (op.node in names or (op.module_path or "") in names
            or op.kind in types or op.op_type.lower() in types)


def _static(op: OpInstance) -> dict:
    return {k: v for k, v in op.signature.items() if k != "call"}


def tune_operators(model: torch.nn.Module, inputs: list[torch.Tensor], arg_names: list[str],
                   cfg: TuneConfig, progress: ProgressBar | None = None) -> TuningRun:
    """Run OPAT on ``model`` (left unchanged) for the sample ``inputs``."""
    t0 = time.perf_counter()
    work, cap, ctx = prepare(model, inputs, arg_names, cfg.scene)
    ops = [op for op in find_operators(cap.graph, work, cap.values, cfg.scene == "train")
           if selected(op, cfg)]
    groups: dict[str, list[OpInstance]] = {}
    keys: dict[str, dict] = {}
    for op in ops:
        key = ctx.key(OPAT, op.signature)
        groups.setdefault(key_id(key), []).append(op)
        keys[key_id(key)] = key
    kb = KnowledgeBase(cfg.bank_root, OPAT)
    budget = CompileBudget(cfg.compile_budget_s)
    summary = RepoSummary()
    items: list[ItemReport] = []
    choices = Choices()
    nodes = {n.name: n for n in cap.graph.nodes}
    if progress is not None:
        progress.set_total(len(groups) + 1)
    for kid, group in groups.items():
        op = group[0]
        label = f"{op.kind} {op.op_type} {describe(op.call_key)}"
        item = _tune_one(kb, keys[kid], op, nodes[op.node], work, cap.values, ctx, cfg, budget)
        summary.count(item[0])
        outcome, strategy, measured, written, table = item
        items.append(ItemReport(OPAT, kid, label, [o.node for o in group], outcome, strategy,
                                measured, written, table))
        if strategy != DEFAULT:
            ident = identity_of(_static(op))
            choices.ops.extend(OpChoice(o.node, ident, o.call_key, strategy) for o in group)
        if progress is not None:
            progress.step(f"{outcome:<11} {label}")
    return complete(OPAT, model, {"operators": choices}, inputs, arg_names, cfg, items, summary, t0, budget.spent_s, progress)


def _tune_one(kb: KnowledgeBase, key: dict, op: OpInstance, node, work: torch.nn.Module,
              values: dict, ctx: BankContext, cfg: TuneConfig, budget: CompileBudget):
    """(outcome, strategy, measured, bank written, candidate table) for one operator."""
    stored = kb.get(key)
    if stored is not None and not cfg.repeat and stored.get("strategy") in OP_STRATEGIES:
        return "hit", str(stored["strategy"]), False, False, {}
    args, kwargs = resolve_args(node, values, work)
    module_op = node.op == "call_module"
    skip = 1 if module_op else 0
    strategies = op_strategies(op.kind, args[skip:], module_op, cfg.candidates)
    modules = [args[0]] if module_op else []
    with torch.set_grad_enabled(cfg.scene == "train"):
        diff = diff_tensors(args[skip:], modules)
    result = tune_item(strategies, {"*": base_callable(node)}, args, kwargs, skip, diff,
                       cfg.scene, False, cfg.measure, budget, op.node)
    table = result.table()
    payload = {"strategy": result.winner, "label": f"{op.kind} {op.op_type}",
               "candidates": table}
    d = decide(kb, key, result.winner, payload, result.beats)
    return d.outcome, d.strategy, True, d.written, table
