"""The GDAT result report (``aoe_result_gdat_<timestamp>_<pid>.json``) and its chart.

The report carries AOE's keys (``basic``, ``GDAT.model_baseline_performance(ms)``,
``model_result_performance(ms)``, ``model_performance_improvement``,
``gdat_tuning_result``, ``repo_summary``) plus what a user needs to trust or replay
the decision: the chosen plan in every format (DDP caps, HCCL split indices,
MindSpore fusion config), every candidate's predicted and measured step time, the
lower bound, the model's prediction error, the noise threshold, the cost model and
the contention factors.  :func:`hit_report` and :func:`tuning_report` assemble it
for a knowledge-base hit and for a tuning run; :func:`write_report` writes it,
with the tuning run's before/after chart (:func:`write_chart`) beside it.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

from gdat import log
from gdat.aoe_result import improvement_percent, write_result
from gdat.cost_model import AllreduceCostModel, Contention
from gdat.decide import Verdict
from gdat.errors import PlanNotExpressible
from gdat.knowledge_base import RepoSummary
from gdat.layout import GradientLayout
from gdat.measure import WindowStats
from gdat.plan import BucketPlan
from gdat.plan_bank import BankedPlan
from gdat.schedule.candidates import Candidates, RankedPlan
from gdat.schedule.simulator import Simulation, stretched
from gdat.timeline import BucketSpan, Profile, ReadyTimeline, StepRecord

__all__ = ["CandidateResult", "GdatReport", "plan_formats", "hit_report", "tuning_report", "write_report",
           "write_chart", "predicted_step_record", "compression_section"]


@dataclass(frozen=True)
class CandidateResult:
    """A plan the tuner considered: predicted and (if measured) measured median step."""

    plan: BucketPlan
    predicted_ms: float
    measured_ms: float | None = None
    mad_ms: float | None = None


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
    baseline_ms: float
    result_ms: float
    summary: RepoSummary
    chosen: dict[str, Any]
    baseline_plan: dict[str, Any]
    candidates: list[CandidateResult] = field(default_factory=list)
    lower_bound_ms: float | None = None
    baseline_predicted_ms: float | None = None
    noise_ms: float | None = None
    tuning_steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def prediction_error(self) -> float | None:
        """Median of |predicted - measured| / measured over measured plans."""
        pairs = [(c.predicted_ms, c.measured_ms) for c in self.candidates if c.measured_ms]
        if self.baseline_predicted_ms is not None:
            pairs.append((self.baseline_predicted_ms, self.baseline_ms))
        if not pairs:
            return None
        return statistics.median(abs(p - m) / m for p, m in pairs)

    def section(self) -> dict[str, Any]:
        err = self.prediction_error()
        return {
            "model_baseline_performance(ms)": round(self.baseline_ms, 3),
            "model_result_performance(ms)": round(self.result_ms, 3),
            "model_performance_improvement": improvement_percent(self.baseline_ms, self.result_ms),
            "gdat_tuning_result": self.outcome,
            "reason": self.reason,
            "repo_summary": self.summary.to_dict(),
            "chosen_plan": self.chosen,
            "baseline_plan": self.baseline_plan,
            "candidates": [{"label": c.plan.label, "buckets": len(c.plan.buckets), "plan": c.plan.to_dict(),
                            "predicted_step_ms": round(c.predicted_ms, 3),
                            "measured_step_ms": None if c.measured_ms is None else round(c.measured_ms, 3),
                            "measured_mad_ms": None if c.mad_ms is None else round(c.mad_ms, 3)}
                           for c in self.candidates],
            "baseline_predicted_step_ms": None if self.baseline_predicted_ms is None
            else round(self.baseline_predicted_ms, 3),
            "lower_bound_ms": None if self.lower_bound_ms is None else round(self.lower_bound_ms, 3),
            "model_prediction_error": None if err is None else round(err, 4),
            "noise_threshold_ms": None if self.noise_ms is None else round(self.noise_ms, 3),
            "tuning_steps": self.tuning_steps,
            **self.extra,
        }

    def write(self, work_path: str) -> str:
        """Write the result file; returns its path."""
        os.makedirs(work_path, exist_ok=True)
        return write_result(work_path, "gdat", self.tuning_name, self.tuning_time_s, self.section())


def hit_report(tuning_name: str, entry: BankedPlan, layout: GradientLayout, bank_root: str,
               topology: dict[str, Any]) -> GdatReport:
    """The report of a knowledge-base hit: the stored plan, no tuning step."""
    summary = RepoSummary()
    summary.count("hit")
    return GdatReport(tuning_name, 0.0, "bank hit", "plan taken from the knowledge base; no tuning steps",
                      entry.baseline_ms, entry.result_ms, summary, plan_formats(entry.plan, layout), {},
                      tuning_steps=0, extra={"knowledge_base": bank_root, "topology": topology})


def tuning_report(tuning_name: str, tuning_time_s: float, tuning_steps: int, verdict: Verdict,
                  baseline: WindowStats, found: Candidates, measured: Sequence[WindowStats],
                  bank_outcome: str, bank_entry: str | None, ladder: AllreduceCostModel,
                  topology: dict[str, Any]) -> GdatReport:
    """The report of a tuning run: the baseline and every measured candidate, the
    verdict, the bank outcome and the fitted model."""
    winner = None if verdict.winner is None else found.ranked[verdict.winner]
    base_ms = baseline.median_s * 1e3
    result_ms = base_ms if winner is None else measured[verdict.winner].median_s * 1e3
    summary = RepoSummary()
    summary.count(bank_outcome)
    layout = found.timeline.layout
    return GdatReport(
        tuning_name=tuning_name, tuning_time_s=tuning_time_s,
        outcome="tuning unsatisfied" if winner is None else "tuning successful", reason=verdict.reason,
        baseline_ms=base_ms, result_ms=result_ms, summary=summary,
        chosen=plan_formats(found.baseline_plan if winner is None else winner.plan, layout),
        baseline_plan=plan_formats(found.baseline_plan, layout),
        candidates=[CandidateResult(c.plan, c.sim.step_s * 1e3, m.median_s * 1e3, m.mad_s * 1e3)
                    for c, m in zip(found.ranked, measured, strict=True)],
        lower_bound_ms=found.lower_bound_s() * 1e3,
        baseline_predicted_ms=found.simulate(found.baseline_plan).step_s * 1e3,
        noise_ms=verdict.noise_s * 1e3, tuning_steps=tuning_steps,
        extra={"noisy": verdict.noisy, "topology": topology, "cost_model": ladder.to_dict(),
               "calibrated_cost_model": found.cost.to_dict(), "contention": found.contention.to_dict(),
               "knowledge_base_entry": bank_entry, "baseline_window": baseline.to_dict()})


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


def write_report(report: GdatReport, work_path: str) -> str | None:
    """Write ``report`` and say where; ``None`` (with a warning) if it cannot be written."""
    try:
        path = report.write(work_path)
    except OSError as e:
        log.warn(f"cannot write the report ({e})")
        return None
    log.info(f"report: {path}")
    return path


def write_chart(report_path: str, profile: Profile, found: Candidates, winner: RankedPlan | None) -> None:
    """The before/after chart next to the report: the profile's overlapped steps as
    measured, and the chosen plan's step as predicted (needs matplotlib)."""
    from gdat.profiling.overlap_plot import plot_available, plot_overlap

    if not plot_available():
        return
    before = [(f"rank {r.rank} step {s.step}", s) for r in profile.ranks for s in r.steps if s.kind == "overlap"]
    chosen = winner.plan if winner else found.baseline_plan
    after = [("predicted", predicted_step_record(found.timeline, chosen, found.simulate(chosen), 0,
                                                 found.contention))]
    try:
        plot_overlap([("before: measured, user configuration (overlapped profile steps)", before),
                      (f"after: predicted, {chosen.label}", after)], report_path[:-len(".json")] + ".png")
    except OSError as e:
        log.warn(f"cannot write the chart ({e})")


def predicted_step_record(timeline: ReadyTimeline, plan: BucketPlan, sim: Simulation, step: int,
                          contention: Contention) -> StepRecord:
    """A :class:`StepRecord` drawn from a simulation (for the "after" chart)."""
    ready, _ = stretched(timeline, contention.compute_stretch)
    spans = tuple(BucketSpan(k, b.params, b.nbytes, s, e)
                  for k, (b, s, e) in enumerate(zip(plan.buckets, sim.start_s, sim.end_s)))
    end = max(sim.backward_end_s, sim.comm_end_s)
    return StepRecord(step=step, kind="overlap", start_s=0.0, forward_end_s=timeline.backward_start_s,
                      backward_start_s=timeline.backward_start_s, backward_end_s=sim.backward_end_s,
                      grad_ready=tuple((p, float(t)) for p, t in zip(timeline.layout.order, ready)), buckets=spans,
                      step_end_s=end + timeline.post_s)
