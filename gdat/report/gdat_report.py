"""The GDAT result report (``aoe_result_gdat_<timestamp>_<pid>.json``) and its chart.

The report carries AOE's keys (``basic``, ``GDAT.model_baseline_performance(ms)``,
``model_result_performance(ms)``, ``model_performance_improvement``,
``gdat_tuning_result``, ``repo_summary``) plus what a user needs to trust or replay
the decision: the chosen plan in every format (DDP caps, HCCL split indices,
MindSpore fusion config), every candidate's predicted and measured step time, the
lower bound, the model's prediction error before and after the correction
measurement taught it, the noise threshold, the cost model and the contention
factors, every measurement block's steps, and the steady state after tuning.
``model_result_performance(ms)`` is the decision's result
(:attr:`gdat.decide.record.Decision.result_s`: the adopted plan's steady-state
median, its paired estimate until the confirmation has run, the baseline's median
when the user's configuration runs on); ``steady_state.status`` says ``pending``
until the confirmation, and ``steady_state`` gives the plan it measures (the one on
trial or adopted, else the user's configuration) as predicted, by the calibrated
simulator and the corrected model, against its measured median.  :func:`hit_report`, :func:`tuning_report` and :func:`untuned_report`
assemble it for a knowledge-base hit, a tuning run and a model gdat did not tune
(``tuning unsatisfied``, the reason, ``null`` performance); :func:`write_report` writes it
(the tuning run's before/after chart beside it is :mod:`gdat.report.chart`'s).
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

from gdat.bank.decisions import Kept
from gdat.bank.plans import BankedPlan
from gdat.bank.store import RepoSummary
from gdat.core import log
from gdat.core.layout import GradientLayout
from gdat.core.plan import BucketPlan
from gdat.decide.record import Decision
from gdat.decide.verdict import BASELINE
from gdat.decide.windows import pooled
from gdat.errors import PlanNotExpressible
from gdat.report.aoe_file import improvement_percent, write_result
from gdat.schedule.candidates import RankedPlan

__all__ = ["CandidateResult", "GdatReport", "plan_formats", "hit_report", "untuned_report", "tuning_report",
           "write_report", "compression_section"]


@dataclass(frozen=True)
class CandidateResult:
    """A plan the tuner considered: its predicted step and, if measured, its paired
    estimate ``m_base + D`` (``measured_ms``, the one the model's error is judged
    by: the machine's drift taken out), the median of its own steps, their median
    absolute deviation and the paired difference ``D``."""

    plan: BucketPlan
    predicted_ms: float
    measured_ms: float | None = None
    mad_ms: float | None = None
    corrected_ms: float | None = None
    paired_diff_ms: float | None = None
    blocks: int = 0
    median_ms: float | None = None


def plan_formats(plan: BucketPlan, layout: GradientLayout) -> dict[str, Any]:
    """The plan as DDP caps (for gradients laid out as ``layout``) and, where
    expressible, HCCL and MindSpore indices."""
    out: dict[str, Any] = {"label": plan.label, "buckets": len(plan.buckets),
                           "bucket_bytes": list(plan.bucket_bytes), "plan": plan.to_dict()}
    for name, fn in (("bucket_cap_mb_list", lambda: plan.ddp_caps_mb(layout)),
                     ("hccl_split_indices", lambda: plan.hccl_split_indices(len(layout))),
                     ("mindspore_all_reduce_fusion_config", lambda: plan.mindspore_fusion_config(len(layout)))):
        try:
            out[name] = fn()
        except PlanNotExpressible as e:
            out[name] = f"not expressible: {e}"
    return out


@dataclass
class GdatReport:
    """Everything the tuner learnt in one run."""

    tuning_name: str
    tuning_time_s: float
    outcome: str
    reason: str
    baseline_ms: float | None
    result_ms: float | None
    summary: RepoSummary
    chosen: dict[str, Any]
    baseline_plan: dict[str, Any]
    candidates: list[CandidateResult] = field(default_factory=list)
    lower_bound_ms: float | None = None
    baseline_predicted_ms: float | None = None
    noise_ms: float | None = None
    tuning_steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    baseline_corrected_ms: float | None = None

    def prediction_error(self, corrected: bool = False) -> float | None:
        """Median of |predicted - measured| / measured over measured plans (the
        baseline included), with the model as generation fitted it or, with
        ``corrected``, as measurement corrected it."""
        pairs = [(c.corrected_ms if corrected else c.predicted_ms, c.measured_ms) for c in self.candidates
                 if c.measured_ms]
        base = self.baseline_corrected_ms if corrected else self.baseline_predicted_ms
        if base is not None:
            pairs.append((base, self.baseline_ms))
        pairs = [(p, m) for p, m in pairs if p is not None]
        if not pairs:
            return None
        return statistics.median(abs(p - m) / m for p, m in pairs)

    def section(self) -> dict[str, Any]:
        err, corrected = self.prediction_error(), self.prediction_error(corrected=True)
        return {
            "model_baseline_performance(ms)": _ms(self.baseline_ms),
            "model_result_performance(ms)": _ms(self.result_ms),
            "model_performance_improvement": None if self.baseline_ms is None or self.result_ms is None
            else improvement_percent(self.baseline_ms, self.result_ms),
            "gdat_tuning_result": self.outcome,
            "reason": self.reason,
            "repo_summary": self.summary.to_dict(),
            "chosen_plan": self.chosen,
            "baseline_plan": self.baseline_plan,
            "candidates": [{"label": c.plan.label, "buckets": len(c.plan.buckets), "plan": c.plan.to_dict(),
                            "predicted_step_ms": round(c.predicted_ms, 3),
                            "measured_step_ms": _ms(c.median_ms), "paired_estimate_ms": _ms(c.measured_ms),
                            "measured_mad_ms": None if c.mad_ms is None else round(c.mad_ms, 3),
                            "corrected_predicted_step_ms": _ms(c.corrected_ms),
                            "paired_difference_ms": _ms(c.paired_diff_ms), "blocks": c.blocks}
                           for c in self.candidates],
            "baseline_predicted_step_ms": None if self.baseline_predicted_ms is None
            else round(self.baseline_predicted_ms, 3),
            "lower_bound_ms": None if self.lower_bound_ms is None else round(self.lower_bound_ms, 3),
            "model_prediction_error": None if err is None else round(err, 4),
            "model_prediction_error_corrected": None if corrected is None else round(corrected, 4),
            "noise_threshold_ms": None if self.noise_ms is None else round(self.noise_ms, 3),
            "tuning_steps": self.tuning_steps,
            **self.extra,
        }

    def write(self, work_path: str, path: str | None = None) -> str:
        """Write the result file (a new one, or ``path`` again); returns its path."""
        os.makedirs(work_path, exist_ok=True)
        return write_result(work_path, "gdat", self.tuning_name, self.tuning_time_s, self.section(), path)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def hit_report(tuning_name: str, entry: BankedPlan, layout: GradientLayout, bank_root: str,
               topology: dict[str, Any]) -> GdatReport:
    """The report of a knowledge-base hit: the stored plan, no tuning step."""
    summary = RepoSummary()
    summary.count("hit")
    return GdatReport(tuning_name, 0.0, "bank hit", "plan taken from the knowledge base; no tuning steps",
                      entry.baseline_ms, entry.result_ms, summary, plan_formats(entry.plan, layout), {},
                      tuning_steps=0, extra={"knowledge_base": bank_root, "topology": topology})


def untuned_report(tuning_name: str, reason: str, tuning_steps: int = 0) -> GdatReport:
    """The report of a model gdat did not tune: ``tuning unsatisfied`` with the
    reason, no plan and no measured step time (``null``: nothing was measured)."""
    summary = RepoSummary()
    summary.count("unsatisfied")
    return GdatReport(tuning_name, 0.0, "tuning unsatisfied", reason, None, None, summary, {}, {},
                      tuning_steps=tuning_steps)


def tuning_report(d: Decision, kept: Kept) -> GdatReport:
    """The report of a tuning decision ``d`` and what the bank ``kept`` of it: every
    block and measured candidate (its paired estimate ``m_base + D_i`` as its
    measured step), the verdict, the steady state after tuning (pending until the
    confirmation) with an adopted plan's paired check against the baseline around
    it, the bank outcome and the fitted and corrected model."""
    verdict, found, correction = d.verdict, d.found, d.correction
    base_ms = d.baseline_s * 1e3
    steady_plan = d.winner.plan if d.winner else found.baseline_plan
    prediction = _steady_prediction(d, steady_plan)
    if d.steady is None:
        steady_state: dict[str, Any] = {"status": "pending: the script ended before the confirmation, or it has "
                                                  "not run yet; the result is the estimate from the blocks" +
                                                  ("; the plan on trial is not kept unless adopted"
                                                   if verdict.trial else ""), **prediction}
    else:
        status = "reverted to the user configuration" if d.reverted else \
            "running on trial" if d.check is not None and d.check.outcome == "continues" else "confirmed"
        steady_state = {"status": status, "plan": d.winner.plan.label if d.winner else "user configuration",
                        **d.steady.to_dict(), **prediction,
                        "paired_check": d.check.to_dict() if d.check is not None else None}
    summary = RepoSummary()
    summary.count(kept.outcome)
    layout = found.timeline.layout
    results = []
    for i, c in enumerate(d.plans):
        st = d.standings.get(i)
        windows = [b.window for b in d.blocks if b.plan == i]
        results.append(CandidateResult(
            c.plan, c.sim.step_s * 1e3, None if st is None else base_ms + st.diff_s * 1e3,
            pooled(windows).mad_s * 1e3 if windows else None, correction.predict_s(found, c.plan) * 1e3,
            None if st is None else st.diff_s * 1e3, len(windows), pooled(windows).median_s * 1e3 if windows else None))
    label = {BASELINE: "baseline", **{i: c.plan.label for i, c in enumerate(d.plans)}}
    extra: dict[str, Any] = {
        "noisy": verdict.noisy, "trial": verdict.trial, "reverted": d.reverted, "steady_state": steady_state,
        "topology": dict(d.topology), "cost_model": d.ladder.to_dict(),
        "calibrated_cost_model": found.cost.to_dict(), "contention": found.contention.to_dict(),
        "model_correction": correction.to_dict(), "knowledge_base_entry": kept.entry,
        "baseline_window": d.window_of(BASELINE).to_dict(),
        "windows": [{**b.to_dict(), "label": label[b.plan]} for b in d.blocks],
        "evidence": _evidence(d)}
    if d.find_unused is not None:
        extra["find_unused_parameters_cost"] = d.find_unused.to_dict()
    if d.compression_errors:
        extra["compression"] = compression_section(d.compress, d.plans, d.compression_errors)
    return GdatReport(
        tuning_name=d.tuning_name, tuning_time_s=d.tuning_time_s,
        outcome="tuning successful" if d.adopted is not None else "tuning unsatisfied", reason=_reason(d),
        baseline_ms=base_ms, result_ms=d.result_s * 1e3, summary=summary,
        chosen=plan_formats(d.runs, layout), baseline_plan=plan_formats(found.baseline_plan, layout),
        candidates=results,
        lower_bound_ms=found.lower_bound_s() * 1e3,
        baseline_predicted_ms=found.simulate(found.baseline_plan).step_s * 1e3,
        baseline_corrected_ms=correction.predict_s(found, found.baseline_plan) * 1e3,
        noise_ms=verdict.noise_s * 1e3, tuning_steps=d.decision_step + 1, extra=extra)


def _steady_prediction(d: Decision, plan: BucketPlan) -> dict[str, Any]:
    """The steady-state plan's step as the calibrated simulator and the corrected
    model predicted it, and their signed errors against its measured steady-state
    median (``median_ms``): ``(predicted - measured) / measured``, ``None`` until
    measured."""
    predicted = d.found.simulate(plan).step_s * 1e3
    corrected = d.correction.predict_s(d.found, plan) * 1e3
    measured = d.steady.median_s * 1e3 if d.steady is not None else None
    return {"predicted_step_ms": round(predicted, 3), "corrected_predicted_step_ms": round(corrected, 3),
            "prediction_error": None if measured is None else round(predicted / measured - 1, 4),
            "corrected_prediction_error": None if measured is None else round(corrected / measured - 1, 4)}


def _reason(d: Decision) -> str:
    """The verdict's reason, and what the steady state said of it."""
    reason, check = d.verdict.reason, d.check
    if check is None or d.steady is None:
        return reason
    measured = f"{d.steady.median_s * 1e3:.2f} ms against the user configuration's {check.reference_s * 1e3:.2f} " \
        f"ms measured around it"
    if d.reverted:
        return f"{reason}; in steady state the {'plan on trial' if d.verdict.trial else 'adopted plan'} ran " \
            f"{measured}, {check.why_switched_back}: switched back to the user configuration"
    if d.verdict.trial and check.outcome == "holds":
        return f"{reason}; adopted in steady state by the sequential test: {measured}"
    if check.outcome == "continues":
        return f"{reason}; in steady state {measured}, the evidence with this window inconclusive: it runs on, on " \
            f"trial, while measuring goes on"
    return reason


def _evidence(d: Decision) -> dict[str, Any] | None:
    """What the decision rests on: launches, paired blocks, each candidate's mean
    difference and log-likelihood ratio against the sequential test's bounds."""
    ev, j = d.evidence, d.judgement
    if ev is None or j is None:
        return None
    return {"confident": d.confident, "launches": ev.launches, "paired_blocks": ev.blocks,
            "min_gain_ms": round(j.delta_s * 1e3, 3), "adopt_at": round(j.upper, 3), "reject_at": round(j.lower, 3),
            "candidates": [{"plan": p.plan.get("label", ""), "blocks": len(p.observations),
                            "mean_diff_ms": round(p.mean_s * 1e3, 3), "llr": round(llr, 3), "status": status}
                           for p, llr, status in zip(ev.plans, j.llr, j.status)]}


def compression_section(dtype: str, candidates: Sequence[RankedPlan],
                        errors: dict[int, dict[int, float]]) -> dict[str, Any]:
    """The report's ``compression`` entry: per measured compressed candidate, each
    compressed bucket's size and the relative error ``||c - e||_2 / ||e||_2`` of its
    averaged gradient against the exact allreduce, measured on a real step
    (``null`` where the probe did not see the bucket)."""
    return {"dtype": dtype, "candidates": [
        {"label": candidates[i].plan.label, "compressed_buckets": [
            {"bucket": k, "nbytes": b.nbytes,
             "relative_error": None if found.get(k) is None else float(f"{found[k]:.3e}")}
            for k, b in enumerate(candidates[i].plan.buckets) if b.compress]}
        for i, found in sorted(errors.items())]}


def write_report(report: GdatReport, work_path: str, path: str | None = None) -> str | None:
    """Write ``report`` (a new file, or ``path`` again) and say where; ``None``
    (with a warning) if it cannot be written."""
    try:
        path = report.write(work_path, path)
    except OSError as e:
        log.warn(f"cannot write the report ({e})")
        return None
    log.info(f"report: {path}")
    return path
