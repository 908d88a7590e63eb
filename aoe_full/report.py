"""The AOE result section of an OPAT or SGAT run.

``aoe_result_<mode>_<timestamp>_<pid>.json`` (written by :mod:`gdat.report.aoe_file`)
holds ``basic`` and one section, ``OPAT`` or ``SGAT``, with AOE's keys:

* ``model_baseline_performance(ms)`` / ``model_result_performance(ms)``: median
  per-step latency of the untuned and the delivered model, measured side by side
  (a step is a forward, plus backward in scene train).  The delivered model is
  the tuned one only when it beats the untuned one by more than the noise
  (:func:`aoe_full.pipeline.finish`), else the untuned one;
* ``model_performance_improvement``: ``(baseline - result) / result`` in percent;
* ``opat_tuning_result`` / ``sgat_tuning_result``: ``tuning successful`` when the
  tuned model beats the untuned one by more than the noise, else ``tuning
  unsatisfied`` (the default is then as good, and nothing is gained);
* ``repo_modified_operators`` / ``repo_modified_subgraphs``: the bank entries this
  run added or updated;
* ``repo_summary``: AOE's counters.

and these of aoe_full's own: ``scene``, ``tuned_candidate_performance(ms)`` (the
delivered configuration, or the best one measured when none was delivered),
``whole_model`` (its ratio, rounds won, sign-test p, worst relative error in
tolerance units), ``configurations`` (the same for every tuned configuration
the gate measured: OPAT ``operators``; SGAT ``subgraphs`` and ``whole model``),
``delivered`` (the delivered configuration or ``untuned``), ``measured_items``,
``compile_time(s)`` (every candidate's compilation, engines' conversions
included; each candidate's own is in ``items``), ``tuned_model``,
``offline_model`` (the AOTInductor package, or why none was written) and
``items`` (every item and candidate).
"""
from __future__ import annotations

from typing import Any

from aoe_full.offline import OfflineResult
from aoe_full.pipeline import TuningRun
from aoe_full.tuner import ModelComparison
from gdat.report.aoe_file import improvement_percent

__all__ = ["result_section", "tuning_result"]


def tuning_result(run: TuningRun) -> str:
    return "tuning successful" if run.improved else "tuning unsatisfied"


def _gate(c: ModelComparison) -> dict[str, Any]:
    return {"median_ratio": round(c.ratio, 4), "tuned_ms": round(c.tuned_ms, 4),
            "rounds_won": f"{c.comparison.wins}/{c.comparison.rounds}",
            "p_value": round(c.comparison.p_value, 4),
            "relative_error_in_tolerances": c.relative_error}


def result_section(run: TuningRun, tuned_model_path: str,
                   offline: OfflineResult | None = None) -> dict[str, Any]:
    """The result-file section for ``run``."""
    comp = run.comparison
    baseline = round(comp.baseline_ms, 4) if comp else None
    candidate = round(comp.tuned_ms, 4) if comp else None
    result = candidate if run.improved else baseline
    modified = [{"key_id": i.key_id, "item": i.label, "strategy": i.strategy, "outcome": i.outcome}
                for i in run.items if i.written and i.outcome in ("add", "update")]
    kind = "operators" if run.mode == "opat" else "subgraphs"
    section: dict[str, Any] = {
        "model_baseline_performance(ms)": baseline,
        "model_result_performance(ms)": result,
        "model_performance_improvement": (improvement_percent(comp.baseline_ms, comp.tuned_ms)
                                          if comp and run.improved else "0.00%"),
        f"{run.mode}_tuning_result": tuning_result(run),
        f"repo_modified_{kind}": modified,
        "repo_summary": run.summary.to_dict(),
        "scene": run.scene,
        "tuned_candidate_performance(ms)": candidate,
        "whole_model": None if comp is None else _gate(comp),
        "configurations": {n: _gate(c) for n, c in run.configurations.items()},
        "delivered": run.delivered,
        "measured_items": run.measured_items,
        "compile_time(s)": round(run.compile_spent_s, 3),
        "tuned_model": tuned_model_path,
        "offline_model": None if offline is None else offline.to_dict(),
        "items": [i.to_dict() for i in run.items],
    }
    return section
