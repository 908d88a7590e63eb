"""The before/after chart next to a tuning run's report (needs matplotlib).

"Before" is the profile's overlapped steps as measured on the user's
configuration; "after" is the chosen plan's step as the calibrated simulator
predicts it (:func:`predicted_step_record`), drawn the same way
(:func:`gdat.profiling.overlap_plot.plot_overlap`).
"""
from __future__ import annotations

from gdat.core import log
from gdat.core.cost_model import Contention
from gdat.core.plan import BucketPlan
from gdat.core.profile import Profile, ReadyTimeline
from gdat.core.timeline import BucketSpan, StepRecord
from gdat.schedule.candidates import Candidates, RankedPlan
from gdat.schedule.simulator import Simulation, stretched

__all__ = ["write_chart", "predicted_step_record"]


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
    return StepRecord(step=step, kind="overlap", start_s=0.0, forward_end_s=timeline.backward_start_s,
                      backward_start_s=timeline.backward_start_s, backward_end_s=sim.backward_end_s,
                      grad_ready=tuple((p, float(t)) for p, t in zip(timeline.layout.order, ready)), buckets=spans,
                      step_end_s=sim.step_s)
