"""The tuning loop of ``--gdat-mode tune``, on the user's own training steps.

Every step is a real training step.  The loop acts at the start of a step (the
entry of gdat's DDP forward), at step indices every rank knows (the calendar of
:mod:`gdat.decide.calendar`); where it goes next, rank 0 decides and broadcasts:

1. profile: compute-only and overlapped steps, traced (:mod:`gdat.profiling.session`);
   none where the key's inconclusive evidence is resumed with its kept profile;
2. generate: rank 0 ranks the first round's candidates (:mod:`gdat.tune.generate`);
3. measure, interleaved: blocks of the user's configuration (the baseline) and the
   candidates, in rounds rank 0 plans (:mod:`gdat.decide.rounds`), switching the
   live DDP's buckets only when they change (:class:`gdat.reducer.plan_switch.LiveBuckets`);
4. decide (:func:`gdat.decide.judge.judge`: the blocks pooled with the key's
   evidence, by the sequential test): every rank holds the record
   (:class:`gdat.decide.record.Decision`), rank 0 keeps it in the bank and writes
   the report (:mod:`gdat.tune.result`);
5. and after: the steady-state check, measuring on while the evidence is
   inconclusive, and the watch for drift (:mod:`gdat.tune.steady`); a link that
   changed class starts the loop again under the new rate (:meth:`TuningLoop.retune`).

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
from gdat.decide.calendar import plan_calendar
from gdat.decide.judge import judge
from gdat.decide.record import Decision
from gdat.decide.rounds import RoundPlanner
from gdat.decide.verdict import BASELINE, Block
from gdat.decide.windows import StepTimer, gather_window
from gdat.profiling.session import ProfileSession
from gdat.reducer import compression
from gdat.reducer.ddp_model import WeakAttribute, process_group_of
from gdat.reducer.plan_switch import LiveBuckets
from gdat.reducer.torch_internals import comm_hooks
from gdat.report import outcome
from gdat.schedule.candidates import Correction
from gdat.tune.context import TuneContext
from gdat.tune.generate import first_candidates
from gdat.tune.result import TuneResult
from gdat.tune.steady import SteadyState

__all__ = ["TuningLoop"]


class TuningLoop:
    """Controller of one DDP in tune mode (see the module docstring)."""

    ddp = WeakAttribute()

    def __init__(self, ddp: torch.nn.Module, ctx: TuneContext) -> None:
        self.ddp = ddp
        self.group = process_group_of(ddp)
        self.rank = dist.get_rank(self.group)
        self.live = LiveBuckets(ddp, ctx.user_bucket_args)
        self.done = False  # tuning decided and checked: nothing to wait for
        self.watching = True  # the forward still calls the loop
        self.untuned: outcome.Outcome | None = None
        self.result: TuneResult | None = None  # rank 0, from the decision on
        self._probe_until = -1
        outcome.watch(self)
        self._start(ctx)

    def _start(self, ctx: TuneContext) -> None:
        """(Re)start tuning under ``ctx`` at the next step."""
        self.ctx, c = ctx, ctx.config
        resume = ctx.kept_profile is not None
        self.calendar = plan_calendar(c.max_tune_steps, c.warmup_steps, profile=0 if resume else c.profile_steps)
        self.timer = StepTimer()
        self.began = time.time()
        self.session: ProfileSession | None = None
        self.profile = ctx.kept_profile
        self.found, self.plans, self.blocks, self.find_unused = None, [], [], None
        self.compression_errors: dict[int, dict[int, float]] = {}
        self.current, self.round_no = BASELINE, 1
        self.rounds: RoundPlanner | None = None  # rank 0, from the first block on
        self.decision: Decision | None = None  # every rank, from the decision on
        self.steady: SteadyState | None = None  # from the decision on
        if self.calendar.blocks == 0:
            self._give_up(f"--gdat-max-tune-steps {c.max_tune_steps} leaves no room for a candidate (needs at least "
                          f"{plan_calendar(10 ** 6, c.warmup_steps, c.profile_steps).block_start(2) + 1})")
            return
        if ctx.prior is not None and resume:
            why = f"inconclusive evidence of {ctx.prior.launches} launch(es) ({ctx.prior.blocks} paired blocks), " \
                "resumed"
        elif resume:
            why = "miss for the new link rate; the kept profile is used"
        else:
            why = "re-tune (REPEAT_TUNE)" if ctx.stored else "miss"
        log.info(f"tune: knowledge base {why}; tuning in steps 0..{self.calendar.total - 1} (up to "
                 f"{self.calendar.blocks} interleaved blocks of {self.calendar.measure} measured steps), then "
                 f"{self.calendar.confirm} steady-state steps")

    def retune(self, ctx: TuneContext) -> None:
        """The link changed class mid-run: tune again under ``ctx`` (its rate, its
        key's evidence, the kept profile) from the next step."""
        self.done = False
        self._start(ctx)

    def _give_up(self, reason: str, write: bool = True, then: str = "not tuning") -> None:
        """Leave this model untuned: one line, a report with the reason (rank 0, where ``write``)."""
        log.warn(f"{reason}; {then}")
        self.untuned = outcome.untuned(reason, self.ctx.tuning_name, self.ctx.config.work_path,
                                       write and self.rank == 0, self.timer.steps)
        self.done, self.watching = True, False

    def end_early(self, write: bool) -> None:
        """The script ended before tuning finished: say what it lacked; before the
        decision, a report saying so (rank 0, where ``write``); after it, the report
        of step 4 stays."""
        if self.decision is None:
            reason = f"tuning incomplete: the script stopped after {self.timer.steps} steps; tuning needs " \
                f"{self.calendar.total} (lower --gdat-max-tune-steps)"
            self._give_up(reason, write, "nothing was saved in the knowledge base")
        else:
            log.info(f"the script ended before the steady-state confirmation (it needs {self.steady.confirm_at + 1} "
                     f"steps); the report gives the estimate from the measurement blocks")

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
        if self.steady is not None:
            self.steady.before_step(s)
            return
        if s == cal.compute_steps.start and self.profile is None:
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
        if self.session is not None:
            self.session.recorder.start_step()
            self.profile = self.session.finish(self.ctx.cost, {"source": "gdat tuning loop"})
            self.session = None
        found = first_candidates(self.profile, self.ctx, self.calendar, self.group)
        if isinstance(found, str):
            self.user_configuration()
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
            self.user_configuration()
            return
        c = self.plans[plan]
        correction = self.rounds.correction if self.rounds is not None else Correction()
        corrected = "" if correction == Correction() else \
            f", corrected {correction.predict_s(self.found, c.plan) * 1e3:.2f} ms"
        log.info(f"tune: candidate {plan + 1}/{len(self.plans)} {c.plan.label} ({len(c.plan.buckets)} buckets), "
                 f"block {b + 1}/{self.calendar.blocks} round {self.round_no}: predicted "
                 f"{c.sim.step_s * 1e3:.2f} ms{corrected}")
        self.apply(c.plan, probe=plan not in self.compression_errors)

    def apply(self, plan: BucketPlan, probe: bool = False) -> None:
        """Switch to ``plan``, with the compression error probe on for this step and
        the next when ``probe``."""
        self.live.to_plan(plan, self.found.timeline.layout, probe)
        if plan.compressed and probe:
            self._probe_until = self.timer.steps + 1

    def user_configuration(self) -> None:
        """Switch to the user's buckets; the profile's tracer stays while no
        candidate was ever switched to (:meth:`gdat.reducer.plan_switch.LiveBuckets.to_user`)."""
        self.live.to_user(keep_tracer=not self.plans)

    def hold_reducer(self, why: str) -> None:
        """From now on no reducer rebuild (``why``: the user relies on the reducer's
        state): before the decision tuning stops, on the user's configuration; after
        it, the plan that runs stays, checked or not, and measuring stops."""
        if not self.watching:
            return
        if self.session is not None:
            self.session.stop()
            self.session = None
        if self.decision is None:
            self.user_configuration()
            self._give_up(why)
            return
        log.warn(f"{why}; gdat measures nothing more")
        self.done, self.watching = True, False

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
        """Decide (rank 0) and tell every rank, which switches to the plan that runs
        and holds the record; rank 0 keeps and reports it."""
        told = None
        if self.rank == 0:
            self.rounds.refit()
            lossy = [i for i, p in enumerate(self.plans) if p.plan.compressed]
            told = (*judge(self.blocks, [p.plan for p in self.plans], self.found.baseline_plan, lossy,
                           self.ctx.prior, [p.sim.step_s for p in self.plans]), self.rounds.correction)
        verdict, evidence, judgement, correction = broadcast_from_first(told, self.group)
        self.decision = Decision(
            self.ctx.tuning_name, self.ctx.cost, self.ctx.topology, self.ctx.compress, self.profile, self.found,
            tuple(self.plans), tuple(self.blocks), verdict, correction, step, time.time() - self.began,
            dict(self.compression_errors), self.find_unused, evidence=evidence, judgement=judgement)
        if verdict.winner is None:
            self.user_configuration()
        else:
            self.apply(self.plans[verdict.winner].plan)
        if self.rank == 0:
            self.result = TuneResult(self.ctx, self.decision, self.began)
            self.result.keep()
        self.steady = SteadyState(self, step)
