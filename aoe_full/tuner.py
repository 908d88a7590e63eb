"""The closed loop for one item (an operator or a subgraph) and for a whole model.

:func:`tune_item`: build each candidate, check it against the default
(:func:`aoe_full.measure.relative_error` on outputs and, in scene train,
gradients), measure the survivors side by side with the default
(:func:`aoe_full.measure.measure`) and pick the candidate with the lowest median
ratio among those that beat the default by more than the noise
(:func:`aoe_full.measure.compare`); ``"eager"`` when none does.

:func:`compare_models`: the same for the untuned and the tuned model as a whole.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from aoe_full.errors import first_line
from aoe_full.measure import Comparison, MeasureConfig, Timing, compare, make_step, measure, relative_error
from aoe_full.strategies import DEFAULT, CompileBudget, Strategy

__all__ = ["ItemTuning", "tune_item", "ModelComparison", "compare_models", "diff_tensors"]


@dataclass
class ItemTuning:
    """Result of tuning one item: the ``winner`` and, per candidate, its timing
    (``None`` if not measured) and status (``ok``, ``rejected: ...``, ``skipped: ...``)."""

    winner: str
    timings: dict[str, Timing]
    status: dict[str, str]
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    cfg: MeasureConfig = field(default_factory=MeasureConfig)
    compile_s: dict[str, float] = field(default_factory=dict)

    def beats(self, other: str) -> bool:
        """Whether the winner beat strategy ``other`` by more than the noise in
        these measurements (a strategy not measured here is never beaten)."""
        if other not in self.timings or self.winner not in self.timings:
            return False
        return compare(self.timings[self.winner], self.timings[other], self.cfg).beats

    def table(self) -> dict[str, dict[str, Any]]:
        """Per-candidate summary for reports (times in ms)."""
        out: dict[str, dict[str, Any]] = {}
        base = self.timings.get(DEFAULT)
        for name, status in self.status.items():
            row: dict[str, Any] = {"status": status}
            if name in self.compile_s:
                row["compile_s"] = round(self.compile_s[name], 3)
            t = self.timings.get(name)
            if t is not None:
                row["median_ms"] = round(t.median_ms, 6)
                row["first_call_s"] = round(t.first_call_s, 3)
                if base is not None and name != DEFAULT:
                    c = self.comparisons[name]
                    row.update(ratio=round(c.median_ratio, 4), wins=f"{c.wins}/{c.rounds}",
                               p_value=round(c.p_value, 4))
            out[name] = row
        return out


def diff_tensors(args: tuple[Any, ...], modules: list[torch.nn.Module]) -> list[torch.Tensor]:
    """The tensors a train step differentiates against: floating arguments that
    require grad, and the parameters of ``modules`` that do (each once)."""
    seen: set[int] = set()
    out: list[torch.Tensor] = []

    def add(t: torch.Tensor) -> None:
        if id(t) not in seen and t.requires_grad and t.is_floating_point():
            seen.add(id(t))
            out.append(t)

    for a in args:
        if isinstance(a, torch.Tensor):
            add(a)
        elif isinstance(a, (list, tuple)):
            for x in a:
                if isinstance(x, torch.Tensor):
                    add(x)
    for m in modules:
        for p in m.parameters():
            add(p)
    return out


def tune_item(strategies: list[Strategy], bases: dict[str, Callable[..., Any]],
              args: tuple[Any, ...], kwargs: dict[str, Any], skip: int, diff: list[torch.Tensor],
              scene: str, fresh_inputs: bool, cfg: MeasureConfig, budget: CompileBudget,
              tag: str) -> ItemTuning:
    """Tune one item.  ``strategies[0]`` is the default; ``bases`` maps a strategy
    name to the function it wraps (``"*"`` for all others)."""
    steps: dict[str, Callable[[], Any]] = {}
    status: dict[str, str] = {}
    compile_s: dict[str, float] = {}
    reference = None
    for s in strategies:
        reason = s.skip_reason(scene)
        if reason is not None:
            status[s.name] = f"skipped: {reason}"
            continue
        if s.compiled:
            if not budget.allows():
                status[s.name] = f"skipped: compile budget of {budget.limit_s:g} s spent"
                continue
        base = bases.get(s.name, bases["*"])
        t0 = time.perf_counter()
        try:
            impl = s.build(base, skip, tag)
            step = make_step(impl, args, kwargs, diff, scene, fresh_inputs)
            result = step()
        except Exception as e:  # a candidate that cannot run is rejected, not fatal
            status[s.name] = f"rejected: {first_line(e, 160)}"
            if s.name == DEFAULT:
                return ItemTuning(DEFAULT, {}, status, {}, cfg, compile_s)
            continue
        finally:
            if s.compiled:
                compile_s[s.name] = time.perf_counter() - t0
                budget.charge(compile_s[s.name])
        if reference is None:
            reference = result
        else:
            err = relative_error(reference, result)
            if err > 1.0:
                status[s.name] = f"rejected: not equivalent (error {err:.3g} x tolerance)"
                continue
        steps[s.name] = step
        status[s.name] = "ok"
    timings = measure(steps, DEFAULT, cfg) if len(steps) > 1 else {}
    comparisons = {n: compare(t, timings[DEFAULT], cfg) for n, t in timings.items() if n != DEFAULT}
    winners = [(c.median_ratio, n) for n, c in comparisons.items() if c.beats]
    winner = min(winners)[1] if winners else DEFAULT
    return ItemTuning(winner, timings, status, comparisons, cfg, compile_s)


@dataclass(frozen=True)
class ModelComparison:
    """Whole-model latency of the untuned (baseline) and tuned model, in ms per
    step, and the worst relative error of the tuned model's outputs and
    gradients (in units of the tolerance: at most 1 means equivalent)."""

    baseline_ms: float
    tuned_ms: float
    comparison: Comparison
    relative_error: float

    @property
    def ratio(self) -> float:
        return self.comparison.median_ratio


def compare_models(baseline: torch.nn.Module, tuned: dict[str, torch.nn.Module],
                   inputs: list[torch.Tensor], scene: str, cfg: MeasureConfig
                   ) -> dict[str, ModelComparison]:
    """Measure ``baseline`` and every ``tuned`` model (same weights and buffers)
    side by side in one set of interleaved rounds."""
    def step_for(model: torch.nn.Module) -> Callable[[], Any]:
        diff = [p for p in model.parameters() if p.requires_grad]
        return make_step(model, tuple(inputs), {}, diff, scene)

    steps = {"baseline": step_for(baseline)}
    steps.update((f"tuned:{n}", step_for(m)) for n, m in tuned.items())
    reference = steps["baseline"]()
    errors = {n: relative_error(reference, steps[f"tuned:{n}"]()) for n in tuned}
    timings = measure(steps, "baseline", cfg)
    out = {}
    for n in tuned:
        t = timings[f"tuned:{n}"]
        out[n] = ModelComparison(timings["baseline"].median_ms, t.median_ms,
                                 compare(t, timings["baseline"], cfg), errors[n])
    return out
