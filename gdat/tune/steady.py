"""Step 5 of the tuning loop and after: the steady-state check, measuring on while unsure, and the drift watch.

1. Check (:meth:`SteadyState._confirm`, at the calendar's steps,
   :mod:`gdat.decide.calendar`): where a plan runs, ``confirm`` steps of it and one
   block of the user's configuration after them; the plan that runs, adopted or on trial, is judged by the sequential test with its
   window (:func:`gdat.decide.confirm.steady_state_check`) added to the key's
   evidence (:func:`gdat.decide.confirm.confirm`): held, switched back, or run on
   while measuring goes on.
2. Measuring on (:meth:`SteadyState._probe`): while the evidence is inconclusive,
   every ``PROBE_EVERY`` steps one paired block of the configuration believed
   slower (the user's, while the leader runs; else the leader) runs between the
   running configuration's steps before and after it: 1 transition step and 3
   measured steps, at most ``PROBE_STEPS / PROBE_EVERY`` = 3% of the steps.  Its
   paired difference joins the evidence and the sequential test is asked again:
   adopted, the plan runs and is kept; rejected, the user's configuration runs.
3. Drift (:mod:`gdat.decide.drift`): the running configuration's windows against
   what it measured; a sustained departure measures the link again
   (:func:`gdat.profiling.allreduce_bench.measure_allreduce`, ``RECHECK_S``).  A link
   of another class re-tunes from the kept profile under the new rate, the key's
   evidence for that class resumed, or its settled plan applied
   (:meth:`gdat.tune.loop.TuningLoop.retune`); an unchanged link only moves the
   reference.

Rank 0 judges, every rank switches on the same step.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any, Protocol

from gdat.bank.plans import BankedPlan, link_class, lookup
from gdat.bank.store import KnowledgeBase
from gdat.core import log
from gdat.core.collectives import broadcast_from_first
from gdat.core.plan import BucketPlan
from gdat.core.profile import Profile
from gdat.decide.calendar import StepCalendar
from gdat.decide.confirm import confirm, probe_observation, steady_state_check
from gdat.decide.drift import WINDOW, DriftWatch
from gdat.decide.record import Decision
from gdat.decide.sequential import index_of, weigh, with_observation
from gdat.decide.verdict import BASELINE, Verdict
from gdat.decide.windows import StepTimer, WindowStats, gather_window
from gdat.errors import GdatError, ProfileError
from gdat.options import bank_root
from gdat.profiling.allreduce_bench import fit_from_ladder, measure_allreduce
from gdat.schedule.candidates import Candidates
from gdat.schedule.simulator import recalibrated
from gdat.tune.context import TuneContext
from gdat.tune.result import TuneResult


class Loop(Protocol):
    """What the steady state reads and calls of its tuning loop (:class:`gdat.tune.loop.TuningLoop`)."""

    decision: Decision
    calendar: StepCalendar
    timer: StepTimer
    group: Any
    rank: int
    ctx: TuneContext
    result: TuneResult | None
    profile: Profile | None
    found: Candidates | None
    done: bool
    began: float

    def apply(self, plan: BucketPlan, probe: bool = False) -> None: ...

    def user_configuration(self) -> None: ...

    def retune(self, ctx: TuneContext) -> None: ...


__all__ = ["SteadyState", "PROBE_EVERY", "PROBE_STEPS", "RECHECK_S"]

PROBE_STEPS = 4  # 1 transition step and 3 measured steps of the configuration believed slower
PROBE_EVERY = math.ceil(PROBE_STEPS / 0.03)
RECHECK_S = 1.0


class SteadyState:
    """What the loop does from its decision on (module docstring)."""

    def __init__(self, loop: Loop, decision_step: int) -> None:
        self.loop, self.d0 = loop, decision_step
        cal = loop.calendar
        self.runs = loop.decision.verdict.winner is not None
        self.recheck_at = cal.confirm_steps(decision_step).stop
        self.confirm_at = cal.confirmed_at(decision_step, self.runs)
        self.confirmed = False
        self.watch: DriftWatch | None = None
        self.window_from = 0
        self.probe_at: int | None = None

    def before_step(self, s: int) -> None:
        if not self.confirmed:
            if self.runs and s == self.recheck_at:
                self.loop.user_configuration()  # the baseline's block after the steady-state window
            elif s == self.confirm_at:
                self._confirm(s)
            return
        if self.probe_at is not None and s >= self.probe_at:
            self._probe_step(s)
        elif self.watch is not None and s - self.window_from == WINDOW:
            self._watch(s)

    # --- 1: the check ----------------------------------------------------------------
    def _confirm(self, s: int) -> None:
        loop, cal, d = self.loop, self.loop.calendar, self.loop.decision
        window = gather_window(loop.timer, cal.confirm_steps(self.d0), loop.group)
        check, evidence, reference = None, d.evidence, window
        if self.runs:
            after = gather_window(loop.timer, cal.recheck_steps(self.d0), loop.group)
            told = None
            if loop.rank == 0:
                last_base = max(j for j, b in enumerate(d.blocks) if b.plan == BASELINE)
                check = steady_state_check(d.blocks, window, after, cal.steady_weight(last_base, self.d0))
                check, evidence = confirm(check, evidence, d.winner.plan.to_dict(), evidence.launches - 1,
                                          d.winner.plan.compressed)
                told = check, evidence
            check, evidence = broadcast_from_first(told, loop.group)
            if check.outcome == "switched back":
                reference = after
            else:
                loop.apply(d.winner.plan)
        loop.done = True
        if loop.rank == 0:
            loop.result.settle(window, check, evidence)
            loop.decision = loop.result.decision
        else:
            loop.decision = d.confirmed(window, check, time.time() - loop.began, evidence)
        self.confirmed = True
        self._watch_from(s, reference)

    def _watch_from(self, s: int, reference: WindowStats) -> None:
        self.watch, self.window_from = DriftWatch(reference), s
        d = self.loop.decision
        self.probe_at = s + PROBE_EVERY if not d.confident and self._probed() is not None else None

    # --- 2: measuring on ---------------------------------------------------------------
    def _probed(self) -> int | None:
        """The candidate a probe pairs with the user's configuration: the running one,
        else the exact candidate of this run with the largest log-likelihood ratio
        among those not rejected, if any (a compressed plan is adopted only by the
        launch's verdict, which also holds it against the fastest exact plan,
        :func:`gdat.decide.judge.judge`)."""
        d = self.loop.decision
        if d.running is not None:
            return d.verdict.winner
        if d.judgement is None:
            return None
        j, found = d.judgement, []
        for i, p in enumerate(d.plans):
            k = index_of(d.evidence, p.plan.to_dict())
            if k is not None and not p.plan.compressed and j.status[k] != "reject":
                found.append((j.llr[k], i))
        return max(found)[1] if found else None

    def _probe_step(self, s: int) -> None:
        loop, p = self.loop, self.probe_at
        candidate, main_is_plan = self._probed(), loop.decision.running is not None
        if s == p:  # the configuration believed slower, for one block
            loop.user_configuration() if main_is_plan else loop.apply(loop.decision.plans[candidate].plan)
        elif s == p + PROBE_STEPS:
            loop.apply(loop.decision.plans[candidate].plan) if main_is_plan else loop.user_configuration()
        elif s == p + 2 * PROBE_STEPS:
            self._probe(s, candidate, main_is_plan)

    def _probe(self, s: int, candidate: int, main_is_plan: bool) -> None:
        """The probe's paired observation (module docstring), judged by rank 0."""
        loop, p = self.loop, self.probe_at
        before = gather_window(loop.timer, range(p - 3, p), loop.group)
        probe = gather_window(loop.timer, range(p + 1, p + PROBE_STEPS), loop.group)
        after = gather_window(loop.timer, range(p + PROBE_STEPS + 1, p + 2 * PROBE_STEPS), loop.group)
        told = None
        if loop.rank == 0:
            d = loop.decision
            plan = d.plans[candidate].plan.to_dict()
            observed = probe_observation(before, probe, after, [b.window for b in d.blocks], main_is_plan,
                                         d.evidence.launches - 1)
            evidence = with_observation(d.evidence, plan, observed)
            judgement = weigh(evidence)
            told = evidence, judgement, judgement.status[index_of(evidence, plan)]
        evidence, judgement, status = broadcast_from_first(told, loop.group)
        d = loop.decision
        label = d.plans[candidate].plan.label
        if status == "adopt":
            verdict = Verdict(candidate, d.verdict.noise_s, d.verdict.noisy, f"{d.verdict.reason}; adopted while "
                              f"measuring on ({evidence.blocks} paired blocks over {evidence.launches} launches)")
            loop.apply(d.plans[candidate].plan)
        elif status == "reject":
            verdict = Verdict(None, d.verdict.noise_s, d.verdict.noisy, f"{d.verdict.reason}; {label} rejected while "
                              f"measuring on", confident=judgement.confident)
            loop.user_configuration()
        else:
            verdict = replace(d.verdict, confident=False)
        log.info(f"tune: measuring on, {label} against the user's configuration: "
                 f"{(probe.median_s - (before.median_s + after.median_s) / 2) * 1e3:+.2f} ms; sequential test: "
                 f"{status}")
        revised = replace(d, verdict=verdict, check=None if status != "continue" else d.check, evidence=evidence,
                          judgement=judgement)
        if loop.rank == 0:
            loop.result.revise(revised)
        loop.decision = revised
        switched = (status == "adopt" and not main_is_plan) or (status != "adopt" and status != "continue"
                                                                 and main_is_plan)
        self._watch_from(s, probe if switched else after)

    # --- 3: drift ----------------------------------------------------------------------
    def _watch(self, s: int) -> None:
        loop = self.loop
        window = gather_window(loop.timer, range(self.window_from + 1, s), loop.group)
        self.window_from = s
        if not self.watch.observe(window):
            return
        ref = self.watch.reference.median_s
        try:
            cost = fit_from_ladder(measure_allreduce(max(RECHECK_S, loop.ctx.config.comm_budget_s), loop.group,
                                                     min_bytes=256 << 10))
        except ProfileError as e:
            log.warn(f"drift: step time {window.median_s * 1e3:.2f} ms against {ref * 1e3:.2f} ms; cannot measure "
                     f"the link again ({e}); watching on")
            self.watch.rebase(window)
            return
        old, new = loop.ctx.key["link_class"], link_class(cost.bandwidth_bytes_per_s)
        rate = f"{cost.bandwidth_bytes_per_s * 8e-9:.3g} Gbit/s"
        if abs(new - old) <= 1 and _within(cost.bandwidth_bytes_per_s, loop.ctx.cost.bandwidth_bytes_per_s):
            log.info(f"drift: step time {window.median_s * 1e3:.2f} ms against {ref * 1e3:.2f} ms; the link still "
                     f"measures {rate}: the load changed, not the link; watching from the new level")
            self.watch.rebase(window)
            return
        log.warn(f"drift: step time {window.median_s * 1e3:.2f} ms against {ref * 1e3:.2f} ms; the link now measures "
                 f"{rate} (link class {old} -> {new}): re-tuning for the new rate")
        self._retune(cost)

    def _retune(self, cost) -> None:  # noqa: ANN001 - an AllreduceCostModel
        loop = self.loop
        key = {**loop.ctx.key, "link_class": link_class(cost.bandwidth_bytes_per_s)}
        found = broadcast_from_first(_look_up(key, cost.bandwidth_bytes_per_s, loop) if loop.rank == 0 else None,
                                     loop.group)
        if found is not None and found.confident:
            log.info(f"knowledge base hit for the new rate: plan {found.plan.label!r}; no tuning steps")
            loop.user_configuration() if found.plan.same_partition(loop.found.baseline_plan) else \
                loop.apply(found.plan)
            self.probe_at = None
            self.watch = None
            return
        ctx = replace(loop.ctx, cost=cost.with_cast(loop.ctx.cost.cast), key=key, stored=None if found is None
                      else found.plan, prior=None if found is None else found.evidence, kept_profile=loop.profile,
                      calibration=recalibrated(loop.found.calibration, cost))
        loop.retune(ctx)


def _within(a: float, b: float, tolerance: float = 1.5) -> bool:
    return 1 / tolerance <= a / b <= tolerance


def _look_up(key: dict, bandwidth: float, loop: Loop) -> BankedPlan | None:
    """Rank 0: the bank's entry for ``key`` (the new link class), if usable."""
    try:
        hit = lookup(KnowledgeBase(bank_root(), "gdat"), key, bandwidth, loop.found.timeline.layout)
    except (OSError, GdatError) as e:
        log.warn(f"knowledge base unreadable ({e}); tuning afresh")
        return None
    return None if hit is None else hit.entry
