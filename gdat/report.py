"""The GDAT result report (``aoe_result_gdat_<timestamp>_<pid>.json``) and its chart.

The report carries AOE's keys (``basic``, ``GDAT.model_baseline_performance(ms)``,
``model_result_performance(ms)``, ``model_performance_improvement``,
``gdat_tuning_result``, ``repo_summary``) plus what a user needs to trust or replay
the decision: the chosen plan in every format (DDP caps, HCCL split indices,
MindSpore fusion config), every candidate's predicted and measured step time, the
lower bound, the model's prediction error, the noise threshold, the cost model and
the contention factors.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

from gdat.aoe_result import improvement_percent, write_result
from gdat.errors import PlanNotExpressible
from gdat.knowledge_base import RepoSummary
from gdat.plan import BucketPlan
from gdat.cost_model import Contention
from gdat.schedule.simulator import Simulation, stretched
from gdat.timeline import BucketSpan, ReadyTimeline, StepRecord

__all__ = ["CandidateResult", "GdatReport", "plan_formats", "predicted_step_record"]


@dataclass(frozen=True)
class CandidateResult:
    """A plan the tuner considered: predicted and (if measured) measured median step."""

    plan: BucketPlan
    predicted_ms: float
    measured_ms: float | None = None
    mad_ms: float | None = None


def plan_formats(plan: BucketPlan, order: Sequence[int], nbytes: Sequence[int], dtypes: Sequence[str],
                 n_params: int) -> dict[str, Any]:
    """The plan as DDP caps and, where expressible, HCCL and MindSpore indices."""
    out: dict[str, Any] = {"label": plan.label, "buckets": len(plan.buckets),
                           "bucket_bytes": list(plan.bucket_bytes), "plan": plan.to_dict()}
    for name, fn in (("bucket_cap_mb_list", lambda: plan.ddp_caps_mb(order, nbytes, dtypes)),
                     ("hccl_split_indices", lambda: plan.hccl_split_indices(n_params)),
                     ("mindspore_all_reduce_fusion_config", lambda: plan.mindspore_fusion_config(n_params))):
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
            "candidates": [{"label": c.plan.label, "buckets": len(c.plan.buckets),
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


def predicted_step_record(timeline: ReadyTimeline, plan: BucketPlan, sim: Simulation, step: int,
                          contention: Contention) -> StepRecord:
    """A :class:`StepRecord` drawn from a simulation (for the "after" chart)."""
    ready, _ = stretched(timeline, contention.compute_stretch)
    spans = tuple(BucketSpan(k, b.params, b.nbytes, s, e)
                  for k, (b, s, e) in enumerate(zip(plan.buckets, sim.start_s, sim.end_s)))
    end = max(sim.backward_end_s, sim.comm_end_s)
    return StepRecord(step=step, kind="overlap", start_s=0.0, forward_end_s=timeline.backward_start_s,
                      backward_start_s=timeline.backward_start_s, backward_end_s=sim.backward_end_s,
                      grad_ready=tuple((p, float(t)) for p, t in zip(timeline.order, ready)), buckets=spans,
                      step_end_s=end + timeline.post_s)
