"""The tuning loop of ``--gdat-mode tune``, on the user's own training steps.

Every step is a real training step.  The loop acts at the start of a step (the
entry of gdat's DDP forward), at step indices every rank knows (the calendar of
:mod:`gdat.decide.calendar`); where it goes next, rank 0 decides and broadcasts:

1. profile: compute-only and overlapped steps, traced (:mod:`gdat.profiling.session`);
2. generate: rank 0 ranks the first round's candidates (:mod:`gdat.tune.generate`);
3. measure, interleaved: blocks of the user's configuration (the baseline) and the
   candidates, in rounds rank 0 plans (:mod:`gdat.decide.rounds`), switching the
   live DDP's buckets only when they change (:class:`gdat.reducer.plan_switch.LiveBuckets`);
4. decide (:func:`gdat.decide.verdict.decide_blocks_lossy_last`): every rank holds
   the record (:class:`gdat.decide.record.Decision`), rank 0 keeps it in the bank
   and writes the report (:mod:`gdat.tune.result`);
5. confirm (:mod:`gdat.decide.confirm`): ``confirm`` steps of the decision; after an
   adoption one block of the user's configuration follows, and the plan comes back
   only if its window beat the baseline around it.

A model the loop cannot tune, or a script that ends before the decision, gets a
``tuning unsatisfied`` report with the reason (:mod:`gdat.report.outcome`).  With
``--gdat-compress`` round 1's last place may go to a plan compressing the exposed
tail; its first block probes the gradient error, and it wins only by also beating
the fastest exact configuration.
"""
from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from gdat.core import log
from gdat.core.collectives import broadcast_from_first
from gdat.core.plan import BucketPlan
from gdat.core.profile import Profile
from gdat.decide.calendar import StepCalendar, plan_calendar
from gdat.decide.confirm import steady_state_check
from gdat.decide.record import Decision
from gdat.decide.rounds import RoundPlanner
from gdat.decide.verdict import BASELINE, Block, decide_blocks_lossy_last
from gdat.decide.windows import StepTimer, gather_window
from gdat.profiling.session import ProfileSession
from gdat.reducer import compression
from gdat.reducer.ddp_model import WeakAttribute, process_group_of
from gdat.reducer.plan_switch import LiveBuckets
from gdat.reducer.torch_internals import comm_hooks
from gdat.report import outcome
from gdat.schedule.candidates import Candidates, Correction, RankedPlan
from gdat.schedule.find_unused import FindUnusedCost
from gdat.tune.construction import TuneContext
from gdat.tune.generate import first_candidates
from gdat.tune.result import TuneResult

__all__ = ["TuningLoop"]


class TuningLoop:
    """Controller of one DDP in tune mode (see the module docstring)."""

    ddp = WeakAttribute()

    def __init__(self, ddp: torch.nn.Module, ctx: TuneContext) -> None:
        self.ddp = ddp
        self.ctx = ctx
        self.group = process_group_of(ddp)
        self.rank = dist.get_rank(self.group)
        c = ctx.config
        self.calendar: StepCalendar = plan_calendar(c.max_tune_steps, c.warmup_steps, profile=c.profile_steps)
        self.timer = StepTimer()
        self.session: ProfileSession | None = None
        self.done = False
        self.began = time.time()
        self.profile: Profile | None = None
        self.found: Candidates | None = None
        self.plans: list[RankedPlan] = []
        self.blocks: list[Block] = []
        self.compression_errors: dict[int, dict[int, float]] = {}
        self._probe_until = -1
        self.live = LiveBuckets(ddp, ctx.user_bucket_args)
        self.current = BASELINE
        self.round_no = 1
        self.rounds: RoundPlanner | None = None  # rank 0, from the first block on
        self.decision: Decision | None = None  # every rank, from the decision on
        self.result: TuneResult | None = None  # rank 0, from the decision on
        self.untuned: outcome.Outcome | None = None
        self.find_unused: FindUnusedCost | None = None
        outcome.watch(self)
        if self.calendar.blocks == 0:
            self._give_up(f"--gdat-max-tune-steps {c.max_tune_steps} leaves no room for a candidate (needs at least "
                          f"{plan_calendar(10 ** 6, c.warmup_steps, c.profile_steps).block_start(2) + 1})")
        else:
            log.info(f"tune: knowledge base {'re-tune (REPEAT_TUNE)' if ctx.stored else 'miss'}; tuning in "
                     f"steps 0..{self.calendar.total - 1} (up to {self.calendar.blocks} interleaved blocks of "
                     f"{self.calendar.measure} measured steps), then {self.calendar.confirm} steady-state steps")

    def _give_up(self, reason: str, write: bool = True, then: str = "not tuning") -> None:
        """Leave this model untuned: one line, a report with the reason (rank 0, where ``write``)."""
        log.warn(f"{reason}; {then}")
        self.untuned = outcome.untuned(reason, self.ctx.tuning_name, self.ctx.config.work_path,
                                       write and self.rank == 0, self.timer.steps)
        self.done = True

    def end_early(self, write: bool) -> None:
        """The script ended before tuning finished: say what it lacked; before the
        decision, a report saying so (rank 0, where ``write``); after it, the report
        of step 4 stays."""
        if self.decision is None:
            reason = f"tuning incomplete: the script stopped after {self.timer.steps} steps; tuning needs " \
                f"{self.calendar.total} (lower --gdat-max-tune-steps)"
            self._give_up(reason, write, "nothing was saved in the knowledge base")
        else:
            d = self.decision
            needs = self.calendar.confirmed_at(d.decision_step, d.verdict.winner is not None) + 1
            log.info(f"the script ended before the steady-state confirmation (it needs {needs} steps); the report "
                     f"gives the estimate from the measurement blocks")

    def outcome(self) -> outcome.Outcome:
        """What this tuner did, for the done line."""
        if self.untuned is not None:
            return self.untuned
        if self.result is None:  # not rank 0
            return outcome.Outcome("tuned", self.ctx.config.work_path)
        return self.result.outcome()

    def interrupted_summary(self) -> str:
        """The Ctrl-C line: where tuning stood and what was saved."""
        if self.decision is None:
            return f"interrupted at step {self.timer.steps} while tuning (it needed {self.calendar.total} steps); " \
                "nothing was saved"
        kept = self.result.summary() if self.result is not None else "decided"
        return f"interrupted at step {self.timer.steps}, after tuning had finished ({kept})"

    # --- the loop: what happens at the start of each step -----------------------
    def before_step(self) -> None:
        s, cal = self.timer.tick(), self.calendar
        if s == self._probe_until:
            compression.installed(self.ddp).probe = False
        if self.decision is not None:
            d = self.decision.decision_step
            adopted = self.decision.verdict.winner is not None
            if adopted and s == cal.confirm_steps(d).stop:
                self._user_configuration()  # the baseline's block after the steady-state window
            elif s == cal.confirmed_at(d, adopted):
                self._confirm()
            return
        if s == cal.compute_steps.start:
            if comm_hooks(self.ddp):
                self._give_up("a comm hook is registered on this DDP: gdat cannot trace it")
                return
            self.session = ProfileSession(self.ddp)
            self.live.traced()
        if s in cal.compute_steps or s in cal.overlap_steps:
            self.session.begin_step("compute" if s in cal.compute_steps else "overlap")
        elif s == cal.overlap_steps.stop:
            self._generate()
        else:
            ended = cal.block_ending_at(s)
            if ended is not None:
                self._end_block(ended, s)

    def after_forward(self, output: Any) -> None:
        if self.session is not None:
            self.session.end_forward(output)

    # --- 1, 2: profile and generate ----------------------------------------------------
    def _generate(self) -> None:
        self.session.recorder.start_step()
        self.profile = self.session.finish(self.ctx.cost, {"source": "gdat tuning loop"})
        self.session = None
        found = first_candidates(self.profile, self.ctx, self.calendar, self.group)
        if isinstance(found, str):
            self._user_configuration()
            self._give_up(found)
            return
        found, self.find_unused = found
        self.found = found
        self.plans = list(found.ranked)
        if not found.ranked:
            log.info("tune: every plan the search generated buckets gradients like the user's configuration: "
                     "nothing to measure but the baseline")
        if self.rank == 0:
            self.rounds = RoundPlanner(found, self.plans, self.blocks)
        self._start_block(BASELINE, 0)

    # --- 3: measure --------------------------------------------------------------------
    def _start_block(self, plan: int, b: int) -> None:
        self.current = plan
        if plan == BASELINE:
            self._user_configuration()
            return
        c = self.plans[plan]
        correction = self.rounds.correction if self.rounds is not None else Correction()
        corrected = "" if correction == Correction() else \
            f", corrected {correction.predict_s(self.found, c.plan) * 1e3:.2f} ms"
        log.info(f"tune: candidate {plan + 1}/{len(self.plans)} {c.plan.label} ({len(c.plan.buckets)} buckets), "
                 f"block {b + 1}/{self.calendar.blocks} round {self.round_no}: predicted "
                 f"{c.sim.step_s * 1e3:.2f} ms{corrected}")
        self._apply(c.plan, probe=plan not in self.compression_errors)

    def _apply(self, plan: BucketPlan, probe: bool = False) -> None:
        """Switch to ``plan``, with the compression error probe on for this step and
        the next when ``probe``."""
        self.live.to_plan(plan, self.found.timeline.layout, probe)
        if plan.compressed and probe:
            self._probe_until = self.timer.steps + 1

    def _user_configuration(self) -> None:
        """Switch to the user's buckets; the profile's tracer stays while no
        candidate was ever switched to (:meth:`gdat.reducer.plan_switch.LiveBuckets.to_user`)."""
        self.live.to_user(keep_tracer=not self.plans)

    def hold_reducer(self, why: str) -> None:
        """From now on no reducer rebuild (``why``: the user relies on the reducer's
        state): before the decision tuning stops, on the user's configuration; after
        it, the decided plan stays, without the steady-state confirmation's switches."""
        if self.done:
            return
        if self.session is not None:
            self.session.stop()
            self.session = None
        if self.decision is None:
            self._user_configuration()
            self._give_up(why)
            return
        if self.decision.adopted is None:
            self._user_configuration()
        log.warn(f"{why}; the steady-state confirmation is skipped")
        self.done = True

    def release_reducer(self) -> None:
        """The user registers a comm hook: take the profile's tracer off the reducer
        first (a reducer takes one comm hook in its life)."""
        if self.session is None:
            self.live.drop_tracer()

    def _end_block(self, b: int, step: int) -> None:
        window = gather_window(self.timer, self.calendar.block_steps(b), self.group)
        hook = compression.installed(self.ddp)
        if hook is not None and hook.errors and self.current not in self.compression_errors:
            self.compression_errors[self.current] = dict(hook.errors)
        self.blocks.append(Block(self.current, self.round_no, window))
        who = "baseline (user configuration)" if self.current == BASELINE else \
            f"candidate {self.current + 1} {self.plans[self.current].plan.label}"
        log.info(f"tune: {who}, block {b + 1}: median {window.median_s * 1e3:.2f} ms over {len(window.step_s)} steps")
        nxt = self.rounds.next_block(self.calendar.blocks - (b + 1)) if self.rank == 0 else None
        plan, added, self.round_no = broadcast_from_first(nxt, self.group)
        self.plans.extend(added)
        if plan is None:
            self._decide(step)
        else:
            self._start_block(plan, b + 1)

    # --- 4: decide -----------------------------------------------------------------------
    def _decide(self, step: int) -> None:
        """Decide (rank 0) and tell every rank, which switches to the decision and
        holds its record; rank 0 keeps and reports it."""
        told = None
        if self.rank == 0:
            self.rounds.refit()
            told = (decide_blocks_lossy_last(self.blocks, [i for i, p in enumerate(self.plans) if p.plan.compressed]),
                    self.rounds.correction)
        verdict, correction = broadcast_from_first(told, self.group)
        self.decision = Decision(
            self.ctx.tuning_name, self.ctx.cost, self.ctx.topology, self.ctx.compress, self.profile, self.found,
            tuple(self.plans), tuple(self.blocks), verdict, correction, step, time.time() - self.began,
            dict(self.compression_errors), self.find_unused)
        if verdict.winner is None:
            self._user_configuration()
        else:
            self._apply(self.plans[verdict.winner].plan)
        if self.rank == 0:
            self.result = TuneResult(self.ctx, self.decision, self.began)
            self.result.keep()

    # --- 5: confirm --------------------------------------------------------------------
    def _confirm(self) -> None:
        """Take the steady-state window (and after an adoption the baseline's block
        after it); an adopted plan that beat the baseline around it comes back,
        otherwise the user's configuration stays (rank 0 decides, every rank switches)."""
        d, cal = self.decision, self.calendar
        window = gather_window(self.timer, cal.confirm_steps(d.decision_step), self.group)
        check = None
        if d.verdict.winner is not None:
            after = gather_window(self.timer, cal.recheck_steps(d.decision_step), self.group)
            if self.rank == 0:
                last_base = max(j for j, b in enumerate(d.blocks) if b.plan == BASELINE)
                trial = d.standings[d.verdict.winner] if d.verdict.trial else None
                check = steady_state_check(d.blocks, window, after, cal.steady_weight(last_base, d.decision_step),
                                           trial)
            check = broadcast_from_first(check, self.group)
            if check.holds:
                self._apply(self.plans[d.verdict.winner].plan)
        self.done = True
        if self.rank == 0:
            self.result.settle(window, check)
            self.decision = self.result.decision
        else:
            self.decision = d.confirmed(window, check, time.time() - self.began)
