"""``apply_bank``: what the operator and subgraph banks hold, applied to a module
before data-parallel training.

Only entries tuned in scene ``train`` on this machine (same hardware fingerprint,
torch version and thread count) apply, so every strategy used was checked to
give the same outputs and gradients as the default, within the tolerances of
:mod:`aoe_full.measure`.  Entries match by operator identity (target and module
configuration) or subgraph structural hash; each tuned node dispatches on the
call's shapes at run time, and a call with shapes no entry covers runs the
default.  Subgraph entries take precedence over operator entries inside them,
and an entry for the whole model (SGAT's whole-model item) over every other.

The whole-model training candidates (:mod:`aoe_full.whole_model`: the forward
compiled in segments, and with ``aoe --precision_mode allow_mix_precision_bf16``
bf16 autocast) are matched by the module's signature, not by a trace, so they
apply to models torch.fx cannot trace too, around the forward the other choices
leave.  A mixed-precision entry passed a training-loss check against fp32, not
the gradient tolerance.  The optimizer-step entries (:mod:`aoe_full.optimizer_step`,
keyed by the module's signature too) set torch's faster implementation of the
same update on the optimizers the script builds over the module's parameters.
"""
from __future__ import annotations

import warnings

import torch

from aoe_full.bank import OPAT, SGAT, BankContext, scan
from aoe_full.choices import Choices, OpChoice, SubgraphChoice, apply_choices, identity_of
from aoe_full.errors import TraceError
from aoe_full.graph_capture import trace
from aoe_full.operators import classify, static_identity
from aoe_full.partition import partition, structure_hash, whole_graph
from aoe_full.optimizer_step import banked_implementations, layout_of, use_implementations
from aoe_full.whole_model import install, whole_model_entry
from aoe_full.signature import from_json
from gdat import options
from gdat.core import log
from gdat.core.device import device_type_of

__all__ = ["apply_bank", "bank_transform", "bank_choices", "AoeApplyWarning"]


class AoeApplyWarning(UserWarning):
    """The banks could not be applied to a module; it is returned unchanged."""


def bank_choices(module: torch.nn.Module, bank_root: str, scene: str = "train") -> Choices:
    """The choices the banks under ``bank_root`` hold for ``module`` (traced
    in its current training mode) in ``scene``."""
    ctx = BankContext(scene, device_type_of(module))
    op_entries = scan(bank_root, OPAT, ctx)
    sg_entries = scan(bank_root, SGAT, ctx)
    if not op_entries and not sg_entries:
        return Choices()
    graph, _ = trace(module)
    choices = Choices(miss="opat")
    by_identity: dict[str, list[tuple[tuple, str]]] = {}
    for item, payload in op_entries:
        static = {k: v for k, v in item.items() if k != "call"}
        by_identity.setdefault(identity_of(static), []).append(
            (from_json(item["call"]), str(payload["strategy"])))
    for node in graph.nodes:
        kind = classify(node, module)
        if kind is None:
            continue
        ident = identity_of({"kind": kind, **static_identity(node, module)})
        for call_key, strategy in by_identity.get(ident, []):
            choices.ops.append(OpChoice(node.name, ident, call_key, strategy))
    if sg_entries:
        by_structure: dict[str, list[tuple[tuple, str]]] = {}
        for item, payload in sg_entries:
            by_structure.setdefault(str(item["structure"]), []).append(
                (from_json(item["inputs"]), str(payload["strategy"])))
        subs = partition(graph, module)
        for sub in subs + [whole_graph(graph, len(subs))]:
            structure = structure_hash(sub, module)
            for call_key, strategy in by_structure.get(structure, []):
                choices.subgraphs.append(SubgraphChoice(sub.first, structure, call_key, strategy))
    return choices


def _apply(module: torch.nn.Module, root: str) -> tuple[str, str, str]:
    """Apply the banks under ``root`` to ``module`` (module docstring): the operator
    and subgraph choices, then the whole-model entry around the forward they leave
    (it needs no trace).  Every entry is read before the module changes.  Returns
    what was applied, in words (``""`` when no entry matches), why the
    operator/subgraph bank was not applied (``""`` when it was, or held nothing
    for the module: torch.fx cannot trace it), and what the whole-model entries
    recorded when no candidate won (``""`` otherwise)."""
    whole = whole_model_entry(module, root)
    lost = whole.lost
    steps = banked_implementations(module, root)
    try:
        choices = bank_choices(module, root)
        untraced = ""
    except TraceError as e:
        choices, untraced = Choices(), str(e)
    applied = []
    if choices:
        apply_choices(module, choices)
        applied.append(f"{len(choices.ops)} operator and {len(choices.subgraphs)} subgraph choice(s)")
    if whole.strategy:
        applied.append(whole.applied_words(install(module, whole.strategy, dict(whole.convs))))
    now = steps.get(layout_of(list(module.parameters())), {})
    if steps:
        use_implementations(module, steps)
    if now:
        applied.append("torch's " + ", ".join(f"{impl} {name}" for name, impl in now.items()) +
                       " step for optimizers built over its parameters (checked by aoe)")
    return " and ".join(applied), untraced, lost


def apply_bank(module: torch.nn.Module, bank_root: str | None = None) -> torch.nn.Module:
    """Apply the OPAT/SGAT bank entries and the whole-model training entry for
    ``module`` on this machine, in place, with scene-train semantics; returns
    ``module`` (same object, same ``state_dict()`` keys).  A module with no matching
    entries comes back unchanged; for one torch.fx cannot trace (warned with
    :class:`AoeApplyWarning`) only the whole-model entry can apply.
    ``bank_root``: the knowledge-base root (default: ``TUNE_BANK_PATH`` or
    gdat's default, :func:`gdat.options.bank_root`)."""
    root = bank_root if bank_root is not None else options.bank_root()
    _, untraced, _ = _apply(module, root)
    if untraced:
        warnings.warn(f"operator/subgraph bank not applied: {untraced}", AoeApplyWarning, stacklevel=2)
    return module


def bank_transform(module: torch.nn.Module) -> torch.nn.Module:
    """:func:`apply_bank` as ``gdat-run --gdat-aoe-bank`` runs it (the
    ``gdat.model_transforms`` entry point): one line on stderr, from rank 0, says
    what was applied, or why the model is used as built."""
    root = options.bank_root()
    applied, untraced, lost = _apply(module, root)
    if untraced:
        if applied:
            log.warn(f"--gdat-aoe-bank: applied {applied} from {root}; the operator/subgraph bank is not applied "
                     f"({untraced})")
        else:
            log.warn(f"--gdat-aoe-bank: the operator/subgraph bank is not applied ({untraced}); "
                     f"{lost + '; ' if lost else ''}the model is used as built")
        return module
    if applied:
        log.info(f"--gdat-aoe-bank: applied {applied} from {root}")
    elif lost:
        log.info(f"--gdat-aoe-bank: {lost}; the model is used as built")
    else:
        log.info(f"--gdat-aoe-bank: no scene-train entry under {root} matches {type(module).__name__} on this "
                 f"machine (same hardware, torch {torch.__version__}, {torch.get_num_threads()} thread(s)); the "
                 f"model is used as built")
    return module
