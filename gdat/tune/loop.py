"""The tuning loop of ``--gdat-mode tune``, on the user's own training steps.

Every step is a real training step.  The loop acts at the start of a step (the
entry of gdat's DDP forward), at step indices every rank knows (the schedule of
:mod:`gdat.decide.windows`); where it goes next, rank 0 decides and broadcasts:

1. profile: compute-only and overlapped steps, traced (:mod:`gdat.profiling.session`);
2. generate: rank 0 ranks the first round's candidates (:mod:`gdat.schedule.candidates`);
3. measure, interleaved: blocks of the user's configuration (the baseline) and the
   candidates, in rounds rank 0 plans (:mod:`gdat.decide.rounds`), each block switching
   the live DDP's buckets only when they change (:class:`gdat.reducer.plan_switch.LiveBuckets`);
4. decide: the candidate whose paired gain beats the noise
   (:func:`gdat.decide.verdict.decide_blocks_lossy_last`), else the user's configuration;
   rank 0 keeps it in the bank and writes the report (:mod:`gdat.tune.result`);
5. confirm: ``confirm`` steps of the decision, timestamps only; after an adoption
   one block of the user's configuration follows, and the adopted plan comes back
   only if its window beat the baseline around it (:func:`gdat.decide.confirm.steady_state_check`;
   a plan on trial, which led by less than the noise, with its blocks' evidence
   weighed in); otherwise every rank stays on the user's configuration.

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

from gdat.reducer import compression
from gdat.core import log
from gdat.report import outcome
from gdat.core.collectives import broadcast_from_first
from gdat.tune.construction import TuneContext
from gdat.reducer.torch_internals import comm_hooks
from gdat.reducer.ddp_model import WeakAttribute, process_group_of
from gdat.decide.verdict import BASELINE, Block, decide_blocks_lossy_last, standing_of
from gdat.decide.confirm import steady_state_check
from gdat.errors import PlanError, ProfileError
from gdat.schedule.find_unused import FindUnusedCost, find_unused_cost
from gdat.decide.windows import StepTimer, gather_window
from gdat.decide.calendar import StepCalendar, plan_calendar
from gdat.core.plan import BucketPlan
from gdat.reducer.plan_switch import LiveBuckets
from gdat.profiling.session import ProfileSession
from gdat.decide.rounds import RoundPlanner
from gdat.schedule.candidates import Candidates, Correction, RankedPlan, generate_candidates, \
    with_compressed_candidate
from gdat.core.profile import Profile
from gdat.tune.result import TuneResult

__all__ = ["OnlineTuner"]


class OnlineTuner:
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
        self.squeeze_errors: dict[int, dict[int, float]] = {}
        self._probe_until = -1
        self.live = LiveBuckets(ddp, ctx.user_bucket_args)
        self.current = BASELINE
        self.round_no = 1
        self.rounds: RoundPlanner | None = None  # rank 0, from the first block on
        self.verdict = None  # every rank, from the decision on
        self.decision_step: int | None = None
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

    def _give_up(self, reason: str) -> None:
        """Leave this model untuned: one line, a report with the reason (rank 0)."""
        log.warn(f"{reason}; not tuning")
        self._leave_untuned(reason, write=True)
        self.done = True

    def _leave_untuned(self, reason: str, write: bool) -> None:
        """This tuner's outcome: not tuned for ``reason``, with its report (rank 0, where ``write``)."""
        self.untuned = outcome.untuned(reason, self.ctx.tuning_name, self.ctx.config.work_path,
                                       write and self.rank == 0, self.timer.steps)

    def end_early(self, write: bool) -> None:
        """The script ended before tuning finished: say what it lacked; before the
        decision, a report saying so (rank 0, where ``write``); after it, the report
        of step 4 stays."""
        if self.decision_step is None:
            reason = f"tuning incomplete: the script stopped after {self.timer.steps} steps; tuning needs " \
                f"{self.calendar.total} (lower --gdat-max-tune-steps)"
            log.warn(f"{reason}; nothing was saved in the knowledge base")
            self._leave_untuned(reason, write)
        else:
            needs = self.calendar.confirmed_at(self.decision_step, self.verdict.winner is not None) + 1
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
        if self.decision_step is None:
            return f"interrupted at step {self.timer.steps} while tuning (it needed {self.calendar.total} steps); " \
                "nothing was saved"
        kept = self.result.summary() if self.result is not None else "decided"
        return f"interrupted at step {self.timer.steps}, after tuning had finished ({kept})"

    # --- the loop: what happens at the start of each step -----------------------
    def before_step(self) -> None:
        s, sched = self.timer.tick(), self.calendar
        if s == self._probe_until:
            compression.installed(self.ddp).probe = False
        if self.decision_step is not None:
            adopted = self.verdict.winner is not None
            if adopted and s == sched.confirm_steps(self.decision_step).stop:
                self._user_configuration()  # the baseline's block after the steady-state window
            elif s == sched.confirmed_at(self.decision_step, adopted):
                self._confirm()
            return
        if s == sched.compute_steps.start:
            if comm_hooks(self.ddp):
                self._give_up("a comm hook is registered on this DDP: gdat cannot trace it")
                return
            self.session = ProfileSession(self.ddp)
            self.live.traced()
        if s in sched.compute_steps or s in sched.overlap_steps:
            self.session.begin_step("compute" if s in sched.compute_steps else "overlap")
        elif s == sched.overlap_steps.stop:
            self._generate()
        else:
            ended = sched.block_ending_at(s)
            if ended is not None:
                self._end_block(ended, s)

    def after_forward(self, output: Any) -> None:
        if self.session is not None:
            self.session.end_forward(output)

    # --- 1, 2: profile and generate ----------------------------------------------------
    def _first_round_size(self) -> int:
        """Round 1's candidates: ``top_k``, leaving 2 blocks for a second round when
        the budget has them."""
        return min(self.ctx.config.top_k, max(1, self.calendar.blocks - 3))

    def _generate(self) -> None:
        self.session.recorder.start_step()
        self.profile = self.session.finish(self.ctx.cost, {"source": "gdat online tuner"})
        self.session = None
        found = None
        if self.rank == 0:
            try:
                found = generate_candidates(self.profile, self.ctx.cost, self._first_round_size(), self.ctx.stored)
                if self.ctx.compress:
                    found = with_compressed_candidate(found, self.ctx.compress, self._first_round_size())
                log.info(f"tune: {found.describe()}")
                self.find_unused = find_unused_cost(self.profile, found.cost)
                if self.find_unused is not None:
                    log.warn(self.find_unused.describe())
            except (ProfileError, PlanError) as e:
                found = f"cannot build candidate plans ({e})"
        found = broadcast_from_first(found, self.group)
        if isinstance(found, str):
            self._user_configuration()
            self._give_up(found)
            return
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
        self._apply(c.plan, probe=plan not in self.squeeze_errors)

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

    def release_reducer(self) -> None:
        """The user registers a comm hook: take the profile's tracer off the reducer
        first (a reducer takes one comm hook in its life)."""
        if self.session is None:
            self.live.drop_tracer()

    def _end_block(self, b: int, step: int) -> None:
        window = gather_window(self.timer, self.calendar.block_steps(b), self.group)
        squeezing = compression.installed(self.ddp)
        if squeezing is not None and squeezing.errors and self.current not in self.squeeze_errors:
            self.squeeze_errors[self.current] = dict(squeezing.errors)
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
        """Decide (rank 0), switch every rank to the decision, keep and report."""
        verdict = broadcast_from_first(decide_blocks_lossy_last(
            self.blocks, [i for i, p in enumerate(self.plans) if p.plan.compressed]) if self.rank == 0 else None,
            self.group)
        self.verdict, self.decision_step = verdict, step
        if verdict.winner is None:
            self._user_configuration()
        else:
            self._apply(self.plans[verdict.winner].plan)
        if self.rank == 0:
            self.rounds.refit()
            self.result = TuneResult(self.ctx, self.profile, self.found, self.plans, self.blocks, verdict, step,
                                     self.rounds.correction, self.began, self.squeeze_errors, self.find_unused)
            self.result.keep()

    # --- 5: confirm --------------------------------------------------------------------
    def _confirm(self) -> None:
        """Take the steady-state window (and after an adoption the baseline's block
        after it); an adopted plan that beat the baseline around it comes back,
        otherwise the user's configuration stays (rank 0 decides, every rank switches)."""
        d, sched = self.decision_step, self.calendar
        window = gather_window(self.timer, sched.confirm_steps(d), self.group)
        check = None
        if self.verdict.winner is not None:
            after = gather_window(self.timer, sched.recheck_steps(d), self.group)
            if self.rank == 0:
                last_base = max(j for j, b in enumerate(self.blocks) if b.plan == BASELINE)
                trial = standing_of(self.blocks, self.verdict.winner) if self.verdict.trial else None
                check = steady_state_check(self.blocks, window, after, sched.steady_weight(last_base, d), trial)
            if broadcast_from_first(check.holds if check is not None else None, self.group):
                self._apply(self.plans[self.verdict.winner].plan)
        self.done = True
        if self.rank == 0:
            self.result.settle(window, check)
