"""Candidate generation: from a profile to the plans the tuner measures.

:func:`generate_candidates`, on the profile of the user's own steps:

1. calibrate the model to the profile (:func:`gdat.schedule.simulator.calibrate`:
   the allreduce cost in situ, the contention factors);
2. take the plan the profile's overlapped steps ran (the user's configuration,
   :func:`gdat.schedule.simulator.measured_plan`) as the baseline;
3. rank (:func:`rank_candidates`): simulate a pool of plans (the optimum, the
   optimum under the contention-free model as a hedge against calibration error,
   optima with at most 2, 4 and 8 buckets, every peer plan of
   :mod:`gdat.schedule.baselines`), drop plans grouping gradients like the baseline
   and plans DDP cannot form, and keep ``k`` distinct ones, the best predicted
   first with near-ties diversified;
4. a stored plan (``REPEAT_TUNE``) is measured too: it takes the last place
   unless it is ranked already (and is left out when DDP cannot form it from this
   run's gradient layout).

Plans are told apart by their partition (:meth:`gdat.core.plan.BucketPlan.same_partition`):
a plan grouping gradients like one already chosen, or like the baseline, is never
measured.

Learning from measurement (:func:`fit_correction`, :func:`admissible`).  After each
round of measurement the model is corrected by what it got wrong: an allreduce
start-up cost ``extra_alpha_s >= 0`` the microbenchmark and the in-situ scale did
not see (per-call overhead of many small buckets, contention on them) is added to
every allreduce, and a constant ``offset_s`` (what the profile's instrumentation
and the time of the run shift for every plan alike).  Fit: least squares over the
measured plans (the baseline and every measured candidate, each at its
drift-corrected estimate ``m_base + D_i`` of :mod:`gdat.decide.verdict`),
``min sum_i (measured_i - simulate(plan_i; alpha + extra) - offset)^2``: for a given
``extra`` the offset is the mean residual; ``extra`` is the best of 0 and 40
values spaced evenly in log scale from 1 us to 5% of the baseline step (0 unless
the measured plans have at least two bucket counts).  The next candidates are the
plans ranked best under the corrected model (:func:`rank_candidates` on the
corrected cost: its optimum moves with the correction) that were not measured yet.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from gdat.core.cost_model import AllreduceCostModel, Contention, CostSegment
from gdat.core.plan import BucketPlan
from gdat.core.profile import Profile, ReadyTimeline
from gdat.errors import PlanError, PlanNotExpressible
from gdat.schedule.baselines import peer_plans
from gdat.schedule.compress_search import compressed_plan
from gdat.schedule.search import optimal_plan
from gdat.schedule.simulator import Calibration, Simulation, calibrate, lower_bound_s, measured_plan, simulate

__all__ = ["with_compressed_candidate", "RankedPlan", "rank_candidates", "Candidates", "generate_candidates",
           "Correction", "fit_correction",
           "admissible", "TIE"]

TIE = 0.02
SAME = 0.001



@dataclass(frozen=True)
class RankedPlan:
    """A plan with its simulated step."""

    plan: BucketPlan
    sim: Simulation


@dataclass(frozen=True)
class Candidates:
    """What generation produced: the model fitted to the profile, the baseline
    plan, and the ranked plans to measure (possibly none)."""

    timeline: ReadyTimeline
    calibration: Calibration
    baseline_plan: BucketPlan
    ranked: tuple[RankedPlan, ...]

    @property
    def cost(self) -> AllreduceCostModel:
        return self.calibration.cost

    @property
    def contention(self) -> Contention:
        return self.calibration.contention

    def simulate(self, plan: BucketPlan) -> Simulation:
        """``plan``'s predicted step under the fitted model."""
        return simulate(self.timeline, plan, self.cost, self.contention)

    def lower_bound_s(self) -> float:
        return lower_bound_s(self.timeline, self.cost, self.contention)

    def describe(self) -> str:
        """One line about the profile and the fitted model."""
        t, c = self.timeline, self.contention
        return (f"profile: backward {(t.backward_end_s - t.backward_start_s) * 1e3:.1f} ms, "
                f"allreduce x{self.calibration.comm_scale:.2f} in situ, "
                f"contention sigma={c.compute_stretch:.2f} kappa={c.comm_slowdown:.2f}; "
                f"baseline predicted {self.simulate(self.baseline_plan).step_s * 1e3:.2f} ms, "
                f"lower bound {self.lower_bound_s() * 1e3:.2f} ms")


def generate_candidates(profile: Profile, cost: AllreduceCostModel, k: int,
                        stored: BucketPlan | None = None, calibration: Calibration | None = None) -> Candidates:
    """Steps 1-4 of the module docstring (step 1 given as ``calibration``, where the
    profile was measured on another link); raises :class:`ProfileError` or
    :class:`PlanError` when the profile cannot support a plan."""
    timeline = profile.ready_timeline("compute")
    fitted = calibration if calibration is not None else calibrate(profile, cost)
    baseline = measured_plan(profile)
    ranked = rank_candidates(timeline, fitted.cost, fitted.contention, k, exclude=(baseline,))
    if stored is not None and not any(r.plan.same_partition(stored) for r in ranked) \
            and not baseline.same_partition(stored) and _ddp_can_form(stored, timeline):
        again = BucketPlan(stored.buckets, "stored")
        ranked = ranked[: max(0, k - 1)]
        ranked.append(RankedPlan(again, simulate(timeline, again, fitted.cost, fitted.contention)))
    return Candidates(timeline, fitted, baseline, tuple(ranked))


def with_compressed_candidate(found: Candidates, dtype: str, k: int) -> Candidates:
    """``found`` with its last place (of ``k``) given to the plan of
    :func:`gdat.schedule.compress_search.compressed_plan` (``--gdat-compress``),
    when it predicts a gain and ``k >= 2`` (the exact best is measured beside it)."""
    if k < 2 or found.cost.cast is None:
        return found
    plan = compressed_plan(found.timeline, found.cost, found.contention, dtype, f"optimal+{dtype}")
    if plan is None or not _ddp_can_form(plan, found.timeline):
        return found
    return replace(found, ranked=(*found.ranked[: k - 1], RankedPlan(plan, found.simulate(plan))))


def rank_candidates(
    timeline: ReadyTimeline, cost: AllreduceCostModel, contention: Contention, k: int,
    max_buckets: int | None = None, exclude: tuple[BucketPlan, ...] = (),
) -> list[RankedPlan]:
    """``k`` distinct plans to measure (step 3 of the module docstring; near-ties
    diversified by :func:`_diverse`, plans the model cannot tell apart measured
    once).  Plans grouping gradients like one in ``exclude``, and plans DDP cannot
    form, are skipped."""
    searches = [(contention, max_buckets, "optimal"), (Contention(), max_buckets, "optimal-no-contention")]
    searches += [(contention, limit, f"optimal-max{limit}") for limit in (2, 4, 8)
                 if max_buckets is None or limit < max_buckets]
    pool = []
    for model, limit, label in searches:
        try:
            pool.append(optimal_plan(timeline, cost, model, limit, label))
        except PlanError:  # no dtype-homogeneous partition within the limit
            continue
    pool.extend(p for p in peer_plans(timeline, cost, contention)
                if max_buckets is None or len(p.buckets) <= max_buckets)
    ranked: list[RankedPlan] = []
    for plan in pool:
        if any(plan.same_partition(q.plan) for q in ranked) or any(plan.same_partition(e) for e in exclude):
            continue
        if not _ddp_can_form(plan, timeline):
            continue
        ranked.append(RankedPlan(plan, simulate(timeline, plan, cost, contention)))
    ranked.sort(key=lambda r: r.sim.step_s)
    return _diverse(ranked, k)


def _ddp_can_form(plan: BucketPlan, timeline: ReadyTimeline) -> bool:
    """Whether ``bucket_cap_mb_list`` can make DDP form ``plan`` from the timeline's
    gradients (with several gradient dtypes some partitions cannot be expressed)."""
    try:
        plan.ddp_caps_mb(timeline.layout)
    except PlanNotExpressible:
        return False
    return True


def _diverse(ranked: list[RankedPlan], k: int) -> list[RankedPlan]:
    """The best plan first; then, among the remaining plans predicted within
    ``TIE`` (2%) of the best remaining one, the one whose bucket count is farthest
    (in log scale) from those already chosen: near-ties are decided by measurement,
    so measuring different shapes hedges against model error."""
    chosen, rest = ranked[:1], ranked[1:]
    while rest and len(chosen) < k:
        limit = rest[0].sim.step_s * (1 + TIE)
        near = [r for r in rest if r.sim.step_s <= limit]
        pick = max(near, key=lambda r: min(abs(math.log(len(r.plan.buckets)) - math.log(len(c.plan.buckets)))
                                           for c in chosen))
        rest.remove(pick)
        if not _indistinguishable(pick, chosen):
            chosen.append(pick)
    return chosen


def _indistinguishable(plan: RankedPlan, chosen: list[RankedPlan]) -> bool:
    """Whether a chosen plan has as many buckets and a prediction within ``SAME``
    (0.1%) of ``plan``'s: such plans differ by a small tensor at a bucket boundary,
    a difference no measurement window resolves, so only the first is measured."""
    return any(len(c.plan.buckets) == len(plan.plan.buckets)
               and abs(c.sim.step_s - plan.sim.step_s) <= SAME * c.sim.step_s for c in chosen)


@dataclass(frozen=True)
class Correction:
    """What measurement taught the model (module docstring): ``measured step =
    simulate(plan; every allreduce + extra_alpha_s) + offset_s``, seconds."""

    extra_alpha_s: float = 0.0
    offset_s: float = 0.0

    def cost(self, cost: AllreduceCostModel) -> AllreduceCostModel:
        """``cost`` with ``extra_alpha_s`` added to every allreduce."""
        if self.extra_alpha_s == 0.0:
            return cost
        return replace(cost, segments=tuple(CostSegment(s.min_bytes, s.alpha_s + self.extra_alpha_s,
                                                        s.beta_s_per_byte) for s in cost.segments),
                       source=f"{cost.source} + {self.extra_alpha_s * 1e3:.3f} ms per allreduce (measured)")

    def predict_s(self, found: Candidates, plan: BucketPlan) -> float:
        """``plan``'s step under the corrected model, seconds."""
        return simulate(found.timeline, plan, self.cost(found.cost), found.contention).step_s + self.offset_s

    def to_dict(self) -> dict[str, float]:
        return {"extra_alpha_ms": round(self.extra_alpha_s * 1e3, 4), "offset_ms": round(self.offset_s * 1e3, 3)}


_GRID = 40


def fit_correction(found: Candidates, measured: Sequence[tuple[BucketPlan, float]]) -> Correction:
    """The least-squares correction of the module docstring from ``(plan, measured
    step in seconds)`` pairs (at least one)."""
    plans = [p for p, _ in measured]
    steps = np.array([t for _, t in measured], dtype=np.float64)
    extras = [0.0]
    if len({len(p.buckets) for p in plans}) >= 2:
        extras += list(np.geomspace(1e-6, max(2e-6, 0.05 * float(statistics.median(steps))), _GRID))
    best: tuple[float, Correction] | None = None
    for extra in extras:
        c = Correction(float(extra))
        cost = c.cost(found.cost)
        sims = np.array([simulate(found.timeline, p, cost, found.contention).step_s for p in plans])
        offset = float(np.mean(steps - sims))
        sse = float(np.sum((steps - sims - offset) ** 2))
        if best is None or sse < best[0] * (1 - 1e-9):
            best = (sse, Correction(float(extra), offset))
    assert best is not None
    return best[1]


def admissible(found: Candidates, correction: Correction, measured: Sequence[BucketPlan], k: int,
               below_s: float) -> list[RankedPlan]:
    """Up to ``k`` plans not measured yet, best first under the corrected model,
    predicted faster than ``below_s``; their ``sim`` is the uncorrected model's."""
    cost = correction.cost(found.cost)
    ranked = rank_candidates(found.timeline, cost, found.contention, k, exclude=tuple(measured))
    return [RankedPlan(r.plan, found.simulate(r.plan)) for r in ranked
            if r.sim.step_s + correction.offset_s < below_s]
