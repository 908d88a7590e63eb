"""What OPAT and SGAT share: configuration, the tuning run's record, the
preparation of the model and the final whole-model comparison.

The user's model is never modified: tuning measures on one deep copy (whose
buffers, e.g. batch-norm statistics, move while it is measured), the tuned model
is another deep copy with the choices installed, and the baseline a third.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from aoe_full.bank import BankContext
from aoe_full.choices import Choices, apply_choices
from aoe_full.graph_capture import Capture, capture
from aoe_full.measure import MeasureConfig
from aoe_full.progress import ProgressBar
from aoe_full.tuner import ModelComparison, compare_models
from gdat.bank.store import RepoSummary
from gdat.core.device import device_type_of

__all__ = ["TuneConfig", "ItemReport", "TuningRun", "GateResult", "prepare", "finish", "complete",
           "SCENES", "set_mode", "tuned_copy"]

SCENES = ("infer", "train")


@dataclass(frozen=True)
class TuneConfig:
    """How to tune.  ``candidates``: strategy names to try besides the default
    (``None``: all that apply); ``compile_budget_s``: seconds of compilation the
    run may spend; ``select_names`` / ``select_types``: the ``--tune_ops_file``
    filter (``None``: every operator)."""

    scene: str
    bank_root: str
    repeat: bool = False
    candidates: frozenset[str] | None = None
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    compile_budget_s: float = 600.0
    select_names: frozenset[str] | None = None
    select_types: frozenset[str] | None = None


@dataclass
class ItemReport:
    """One tuned item (a distinct operator signature or subgraph structure + inputs)."""

    mode: str
    key_id: str
    label: str
    instances: list[str]
    outcome: str
    strategy: str
    measured: bool
    written: bool
    candidates: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "label": self.label, "instances": self.instances,
                "outcome": self.outcome, "strategy": self.strategy, "measured": self.measured,
                "bank_written": self.written, "candidates": self.candidates}


@dataclass
class TuningRun:
    """Everything one OPAT or SGAT run found and made.

    ``configurations``: every tuned configuration measured against the untuned
    model in the whole-model gate (OPAT: ``operators``; SGAT: ``subgraphs``, the
    per-subgraph choices, and ``whole model``, the whole model's own choice);
    ``delivered``: the name of the delivered one, or ``untuned``.
    ``candidate_choices`` / ``comparison``: the delivered configuration, or,
    when none beat the untuned model, the one with the lowest median ratio."""

    mode: str
    scene: str
    items: list[ItemReport]
    summary: RepoSummary
    candidate_choices: Choices
    choices: Choices
    tuned: torch.nn.Module
    comparison: ModelComparison | None
    tuning_time_s: float
    compile_spent_s: float
    configurations: dict[str, ModelComparison] = field(default_factory=dict)
    delivered: str = "untuned"

    @property
    def measured_items(self) -> int:
        return sum(1 for i in self.items if i.measured)

    @property
    def improved(self) -> bool:
        """Whether the delivered model is a tuned one (see :func:`finish`)."""
        return bool(self.choices)


def set_mode(module: torch.nn.Module, scene: str) -> None:
    """Training mode for scene train, eval mode for infer.  An exported program's
    module keeps the mode it was exported in (torch refuses to switch it)."""
    if getattr(module, "_in_spec", None) is not None and isinstance(module, torch.fx.GraphModule):
        return
    module.train(scene == "train")


def prepare(model: torch.nn.Module, inputs: list[torch.Tensor], arg_names: list[str],
            scene: str) -> tuple[torch.nn.Module, Capture, BankContext]:
    """A measurement copy of ``model`` in the scene's mode, its capture and the
    bank context."""
    work = copy.deepcopy(model)
    set_mode(work, scene)
    cap = capture(work, inputs, arg_names, grad=(scene == "train"))
    return work, cap, BankContext(scene, device_type_of(model))


def tuned_copy(model: torch.nn.Module, scene: str, choices: Choices, arg_names: list[str],
               install: Callable[[torch.nn.Module, Choices, list[str]], Any]) -> torch.nn.Module:
    """A copy of ``model`` in the scene's mode with ``choices`` installed."""
    tuned = copy.deepcopy(model)
    set_mode(tuned, scene)
    if choices:
        install(tuned, choices, arg_names)
    return tuned


@dataclass
class GateResult:
    """The whole-model gate's verdict (see :func:`finish`)."""

    delivered: str
    choices: Choices
    model: torch.nn.Module
    best: str | None
    comparisons: dict[str, ModelComparison]


def finish(model: torch.nn.Module, candidates: dict[str, Choices], inputs: list[torch.Tensor],
           arg_names: list[str], scene: str, cfg: MeasureConfig,
           install: Callable[[torch.nn.Module, Choices, list[str]], Any]) -> GateResult:
    """The whole-model gate.  The model with each candidate configuration's
    choices is measured side by side with the untuned one (one set of
    interleaved rounds for all).  A configuration qualifies when it beats the
    untuned model by more than the noise and is equivalent within tolerance;
    the qualifying one with the lowest median ratio is delivered.  When none
    qualifies the untuned model is delivered and the choices are dropped
    ("tuning unsatisfied"), since items that win in isolation can lose together."""
    baseline = copy.deepcopy(model)
    set_mode(baseline, scene)
    live = {n: c for n, c in candidates.items() if c} or {"tuned": Choices()}
    tuned = {n: tuned_copy(model, scene, c, arg_names, install) for n, c in live.items()}
    comparisons = compare_models(baseline, tuned, inputs, scene, cfg)
    ranked = sorted(comparisons, key=lambda n: comparisons[n].ratio)
    qualified = [n for n in ranked if live[n] and comparisons[n].comparison.beats
                 and comparisons[n].relative_error <= 1.0]
    if qualified:
        name = qualified[0]
        return GateResult(name, live[name], tuned[name], name, comparisons)
    return GateResult("untuned", Choices(), baseline, ranked[0], comparisons)


def complete(mode: str, model: torch.nn.Module, candidates: dict[str, Choices],
             inputs: list[torch.Tensor], arg_names: list[str], cfg: TuneConfig,
             items: list[ItemReport], summary: RepoSummary, started_s: float,
             compile_spent_s: float, progress: ProgressBar | None) -> TuningRun:
    """End an OPAT or SGAT run: the whole-model gate (:func:`finish`) over the
    candidate configurations, then its :class:`TuningRun` (``started_s`` is the
    run's ``perf_counter`` start)."""
    gate = finish(model, candidates, inputs, arg_names, cfg.scene, cfg.measure, apply_choices)
    if progress is not None:
        progress.step("whole model measured")
    best = gate.best
    return TuningRun(mode, cfg.scene, items, summary, candidates.get(best, Choices()),
                     gate.choices, gate.model, gate.comparisons.get(best),
                     time.perf_counter() - started_s, compile_spent_s, gate.comparisons,
                     gate.delivered)
