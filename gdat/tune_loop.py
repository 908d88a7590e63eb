"""The tuning loop of ``--gdat-mode tune``, on the user's own training steps.

Every step is a real training step.  The loop acts at the start of a step (the
entry of gdat's DDP forward), always at a step index every rank knows (the
schedule of :mod:`gdat.measure`; where the loop goes next, rank 0 decides and
broadcasts at such a step), so ranks never diverge:

1. profile: compute-only steps (allreduce deferred, gradients still averaged) and
   overlapped steps, traced by gdat's comm hook (:mod:`gdat.profiling.session`);
2. generate: rank 0 fits the model and ranks the first round's candidates
   (:func:`gdat.schedule.candidates.generate_candidates`), every rank receives them;
3. measure, interleaved: blocks of the user's configuration (the baseline) and the
   candidates in rounds (:mod:`gdat.decide`: paired differences, successive
   halving); after each round rank 0 refits the model's correction to every
   measurement so far (:func:`gdat.schedule.candidates.fit_correction`) and admits
   the plans the corrected model ranks best (:func:`gdat.schedule.candidates.admissible`);
   each block switches plans (:func:`gdat.plan_switch.switch_buckets`);
4. decide: rank 0 adopts the candidate whose paired gain beats the noise
   (:func:`gdat.decide.decide_blocks`), else the user's configuration stays; every
   rank switches to the decision; rank 0 records the result in the knowledge base
   under its lock (:func:`gdat.plan_bank.keep`) and writes the report and chart
   (:mod:`gdat.report`), with the estimate from the blocks;
5. confirm: the decided plan runs ``confirm`` steps, timestamps only; if an adopted
   plan does not beat the baseline's blocks by the noise rule
   (:func:`gdat.decide.beats`), every rank switches back to the user's
   configuration, the bank entry gives way to it (:func:`gdat.plan_bank.revoke`) and
   stderr says so.  The report is rewritten with the steady-state median.  A script
   that ends before the confirmation keeps the report of step 4.

With ``--gdat-compress`` the first round's last place may go to a plan compressing
the exposed tail (:func:`gdat.schedule.candidates.with_compressed_candidate`): its
blocks run gdat's compression hook (:mod:`gdat.compression`), with the error probe
on for the transition and first step of its first block; it wins only by also
beating the fastest exact configuration (:func:`gdat.decide.decide_blocks_lossy_last`),
and the report gives each compressed bucket's measured gradient error.
"""
from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from gdat import compression, log
from gdat.aoe_result import improvement_percent
from gdat.collectives import broadcast_from_first
from gdat.construction import TuneContext
from gdat.ddp_internals import comm_hooks
from gdat.ddp_model import WeakAttribute, process_group_of
from gdat.decide import BASELINE, Block, Verdict, baseline_median_s, contenders, \
    decide_blocks_lossy_last, \
    holds_in_steady_state, round_order, standings
from gdat.errors import GdatError, PlanError, ProfileError
from gdat.find_unused import FindUnusedCost, find_unused_cost
from gdat.knowledge_base import KnowledgeBase
from gdat.measure import Schedule, StepTimer, WindowStats, gather_window, plan_schedule, pooled
from gdat.plan import BucketPlan
from gdat.plan_bank import BankedPlan, keep, revoke
from gdat.plan_switch import ddp_bucket_arguments, switch_buckets
from gdat.profiling.session import ProfileSession
from gdat.report import GdatReport, compression_section, tuning_report, write_chart, write_report
from gdat.schedule.candidates import Candidates, Correction, RankedPlan, admissible, fit_correction, \
    generate_candidates, with_compressed_candidate
from gdat.settings import bank_root
from gdat.timeline import Profile

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
        self.schedule: Schedule = plan_schedule(c.max_tune_steps, c.warmup_steps, profile=c.profile_steps)
        self.timer = StepTimer()
        self.session: ProfileSession | None = None
        self.done = False
        self.outcome = "nothing was saved"
        self.began = time.time()
        self.profile: Profile | None = None
        self.found: Candidates | None = None
        self.plans: list[RankedPlan] = []
        self.blocks: list[Block] = []
        self.squeeze_errors: dict[int, dict[int, float]] = {}
        self._probe_until = -1
        self.current = BASELINE
        self.round_no = 1
        self.queue: list[int] = []  # rank 0: the current round's blocks still to run
        self.correction = Correction()
        self.verdict: Verdict | None = None
        self.decision_step: int | None = None
        self.report: GdatReport | None = None
        self.report_path: str | None = None
        self.bank_outcome = "unsatisfied"
        self.bank_entry: str | None = None
        self.find_unused: FindUnusedCost | None = None
        if self.schedule.blocks == 0:
            log.warn(f"--gdat-max-tune-steps {c.max_tune_steps} leaves no room for a candidate "
                     f"(needs at least {plan_schedule(10 ** 6, c.warmup_steps, c.profile_steps).block_start(2) + 1})"
                     f"; not tuning")
            self.done = True
        else:
            log.info(f"tune: knowledge base {'re-tune (REPEAT_TUNE)' if ctx.stored else 'miss'}; tuning in "
                     f"steps 0..{self.schedule.total - 1} (up to {self.schedule.blocks} interleaved blocks of "
                     f"{self.schedule.measure} measured steps), then {self.schedule.confirm} steady-state steps")
        log.warn_at_exit(self)

    def _warn_if_incomplete(self) -> None:
        if self.decision_step is None:
            log.warn(f"tuning incomplete: the script ended after {self.timer.steps} steps; tuning needs "
                     f"{self.schedule.total} (lower --gdat-max-tune-steps); nothing was saved")
        elif not self.done:
            log.info(f"the script ended before the steady-state confirmation (it needs "
                     f"{self.schedule.confirm_steps(self.decision_step).stop + 1} steps); the report gives the "
                     f"estimate from the measurement blocks")

    def interrupted_summary(self) -> str:
        """The Ctrl-C line: where tuning stood and what was saved."""
        if self.decision_step is None:
            return f"interrupted at step {self.timer.steps} while tuning (it needed {self.schedule.total} steps); " \
                "nothing was saved"
        return f"interrupted at step {self.timer.steps}, after tuning had finished ({self.outcome})"

    # --- the loop: what happens at the start of each step -----------------------
    def before_step(self) -> None:
        s, sched = self.timer.tick(), self.schedule
        if s == self._probe_until:
            compression.installed(self.ddp).probe = False
        if self.decision_step is not None:
            if s == sched.confirm_steps(self.decision_step).stop:
                self._confirm()
            return
        if s == sched.compute_steps.start:
            if comm_hooks(self.ddp):
                log.warn("a comm hook is registered on this DDP: gdat cannot trace it; not tuning")
                self.done = True
                return
            self.session = ProfileSession(self.ddp)
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
        return min(self.ctx.config.top_k, max(1, self.schedule.blocks - 3))

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
                log.warn(f"cannot build candidate plans ({e}); not tuning")
        found = broadcast_from_first(found, self.group)
        if found is None:
            self._user_configuration()
            self.done = True
            return
        self.found = found
        self.plans = list(found.ranked)
        if not found.ranked:
            log.info("tune: every plan the search generated buckets gradients like the user's configuration")
        if self.rank == 0:
            self.queue = round_order(1, range(len(self.plans)))[1:]
        self._start_block(BASELINE, 0)

    # --- 3: measure --------------------------------------------------------------------
    def _start_block(self, plan: int, b: int) -> None:
        self.current = plan
        if plan == BASELINE:
            self._user_configuration()
            return
        c = self.plans[plan]
        corrected = "" if self.correction == Correction() else \
            f", corrected {self.correction.predict_s(self.found, c.plan) * 1e3:.2f} ms"
        log.info(f"tune: candidate {plan + 1}/{len(self.plans)} {c.plan.label} ({len(c.plan.buckets)} buckets), "
                 f"block {b + 1}/{self.schedule.blocks} round {self.round_no}: predicted "
                 f"{c.sim.step_s * 1e3:.2f} ms{corrected}")
        self._apply(c.plan, probe=plan not in self.squeeze_errors)

    def _apply(self, plan: BucketPlan, probe: bool = False) -> None:
        """Switch to ``plan``: its buckets, and gdat's compression hook exactly when it
        compresses some (with the error probe on for this step and the next when
        ``probe``)."""
        compression.forget(self.ddp)
        switch_buckets(self.ddp, **ddp_bucket_arguments(plan, self.found.timeline.layout))
        if plan.compressed:
            compression.install(self.ddp, plan).probe = probe
            self._probe_until = self.timer.steps + 1 if probe else -1

    def _user_configuration(self) -> None:
        compression.forget(self.ddp)
        switch_buckets(self.ddp, **self.ctx.user_bucket_args)

    def _end_block(self, b: int, step: int) -> None:
        window = gather_window(self.timer, self.schedule.block_steps(b), self.group)
        squeezing = compression.installed(self.ddp)
        if squeezing is not None and squeezing.errors and self.current not in self.squeeze_errors:
            self.squeeze_errors[self.current] = dict(squeezing.errors)
        self.blocks.append(Block(self.current, self.round_no, window))
        who = "baseline (user configuration)" if self.current == BASELINE else \
            f"candidate {self.current + 1} {self.plans[self.current].plan.label}"
        log.info(f"tune: {who}, block {b + 1}: median {window.median_s * 1e3:.2f} ms over {len(window.step_s)} steps")
        nxt = self._next_block(b) if self.rank == 0 else None
        plan, added, self.round_no = broadcast_from_first(nxt, self.group)
        self.plans.extend(added)
        if plan is None:
            self._decide(step)
        else:
            self._start_block(plan, b + 1)

    def _next_block(self, b: int) -> tuple[int | None, list[RankedPlan], int]:
        """Rank 0: the plan of block ``b + 1`` (``None``: measuring is over), the
        plans it admits, and its round (successive halving, :mod:`gdat.decide`)."""
        left = self.schedule.blocks - (b + 1)
        if left == 0:
            return None, [], self.round_no
        if self.queue:
            return self.queue.pop(0), [], self.round_no
        table = contenders(self.blocks)
        self._refit()
        m_base = baseline_median_s(self.blocks)
        estimates = [(m_base + st.diff_s, st.candidate, None) for st in table]
        best = min([m_base, *(e for e, _, _ in estimates)])
        try:
            new = admissible(self.found, self.correction, [self.found.baseline_plan, *(p.plan for p in self.plans)],
                             left - 1, best) if left >= 2 else []
        except (ProfileError, PlanError) as e:  # measuring goes on with the plans at hand
            log.warn(f"cannot rank plans under the corrected model ({e})")
            new = []
        options = sorted(estimates + [(self.correction.predict_s(self.found, r.plan), None, r) for r in new],
                         key=lambda o: o[0])[: left - 1]
        added: list[RankedPlan] = []
        chosen: list[int] = []
        for _, idx, ranked in options:
            if idx is None:
                idx = len(self.plans) + len(added)
                added.append(ranked)
            chosen.append(idx)
        if not chosen:
            if table and self.blocks[-1].plan != BASELINE:  # one more baseline block after the last candidate
                return BASELINE, [], self.round_no
            return None, [], self.round_no
        self.round_no += 1
        self.queue = round_order(self.round_no, chosen)
        return self.queue.pop(0), added, self.round_no

    def _measured_estimates(self) -> list[tuple[BucketPlan, float]]:
        """Every measured plan with its drift-corrected estimate, the baseline first."""
        m_base = baseline_median_s(self.blocks)
        return [(self.found.baseline_plan, m_base),
                *((self.plans[st.candidate].plan, m_base + st.diff_s) for st in standings(self.blocks))]

    def _refit(self) -> None:
        self.correction = fit_correction(self.found, self._measured_estimates())
        log.info(f"tune: model correction {self.correction.extra_alpha_s * 1e3:+.3f} ms per allreduce, "
                 f"offset {self.correction.offset_s * 1e3:+.2f} ms (from {len(self._measured_estimates())} plans)")

    # --- 4: decide -----------------------------------------------------------------------
    def _decide(self, step: int) -> None:
        """Decide (rank 0), switch every rank to the decision, keep and report."""
        verdict = broadcast_from_first(decide_blocks_lossy_last(
            self.blocks, [i for i, p in enumerate(self.plans) if p.plan.compressed]) if self.rank == 0 else None, self.group)
        self.verdict, self.decision_step = verdict, step
        if verdict.winner is None:
            self._user_configuration()
        else:
            self._apply(self.plans[verdict.winner].plan)
        if self.rank == 0:
            self._refit()
            self._keep(verdict)

    def _windows(self, plan: int) -> WindowStats:
        return pooled([b.window for b in self.blocks if b.plan == plan])

    def _keep(self, verdict: Verdict) -> None:
        winner = None if verdict.winner is None else self.plans[verdict.winner]
        m_base = baseline_median_s(self.blocks)
        result_s = m_base if winner is None else \
            m_base + next(st.diff_s for st in standings(self.blocks) if st.candidate == verdict.winner)
        self.bank_outcome, self.bank_entry = self._save(winner, result_s)
        self.report = self._report(None, False)
        base_ms, result_ms = self.report.baseline_ms, self.report.result_ms
        change = f"step time {(result_ms - base_ms) / base_ms * 100:+.1f}%, AOE improvement " \
            f"{improvement_percent(base_ms, result_ms)}" if winner else "kept"
        log.info(f"tune: {self.report.outcome}: {winner.plan.label if winner else 'user configuration'} "
                 f"{result_ms:.2f} ms vs baseline {base_ms:.2f} ms in paired blocks ({change}); {verdict.reason}")
        self.report_path = write_report(self.report, self.ctx.config.work_path)
        self.outcome = self.report.outcome + (f"; report {self.report_path}" if self.report_path else "")
        if self.report_path is not None:
            write_chart(self.report_path, self.profile, self.found, winner)

    def _report(self, steady: WindowStats | None, reverted: bool) -> GdatReport:
        report = tuning_report(self.ctx.tuning_name, time.time() - self.began, self.decision_step + 1, self.verdict,
                               self.blocks, self.plans, self.found, self.correction, self.bank_outcome,
                               self.bank_entry, self.ctx.cost, self.ctx.topology, steady, reverted)
        if self.find_unused is not None:
            report.extra["find_unused_parameters_cost"] = self.find_unused.to_dict()
        if self.squeeze_errors:
            report.extra["compression"] = compression_section(self.ctx.compress, self.plans, self.squeeze_errors)
        return report

    def _save(self, winner: RankedPlan | None, result_s: float) -> tuple[str, str | None]:
        """Keep the winner (or the user's configuration as the verdict) in the bank;
        returns the outcome and the entry's path if it was written.  When the bank
        cannot be written, the outcome is judged by what construction found."""
        found, base = self.found, self._windows(BASELINE)
        plan = found.baseline_plan if winner is None else winner.plan
        entry = BankedPlan(plan, base.median_s * 1e3, result_s * 1e3, self._bandwidth(), time.time())
        measured = [(found.baseline_plan, base),
                    *((self.plans[i].plan, self._windows(i)) for i in sorted({b.plan for b in self.blocks} - {BASELINE}))]
        try:
            bank = KnowledgeBase(bank_root(), "gdat")
            settled = keep(bank, self.ctx.key, entry, winner is not None, found.timeline.layout, measured,
                           None if winner is None else self._windows(self.verdict.winner))
        except (OSError, GdatError) as e:
            log.warn(f"cannot save the plan in the knowledge base ({e})")
            return ("reserved" if self.ctx.stored is not None else "add" if winner else "unsatisfied"), None
        if not settled.written:
            if self.ctx.stored is None:
                log.info("knowledge base: keeping the plan another job stored meanwhile")
            return settled.outcome, None
        path = bank.path_for(self.ctx.key)
        log.info(f"knowledge base: saved {path}")
        return settled.outcome, path

    def _bandwidth(self) -> float:
        return 1.0 / max(self.ctx.cost.beta_s_per_byte, 1e-15)

    # --- 5: confirm --------------------------------------------------------------------
    def _confirm(self) -> None:
        """Measure the decided plan's steady state; switch back when an adopted plan
        does not beat the baseline (rank 0 decides, every rank switches)."""
        window = gather_window(self.timer, self.schedule.confirm_steps(self.decision_step), self.group)
        revert = None
        if self.rank == 0:
            revert = self.verdict.winner is not None and not holds_in_steady_state(self.blocks, window)
        revert = broadcast_from_first(revert, self.group)
        if revert:
            self._user_configuration()
        self.done = True
        if self.rank == 0:
            self._settle(window, revert)

    def _settle(self, window: WindowStats, reverted: bool) -> None:
        base = self._windows(BASELINE)
        if reverted:
            plan = self.plans[self.verdict.winner].plan
            log.warn(f"steady state: the adopted plan {plan.label} ran {window.median_s * 1e3:.2f} ms against "
                     f"{base.median_s * 1e3:.2f} ms for the user's configuration in the measurement blocks, not "
                     f"faster beyond the noise; switched back to the user's configuration")
            verdict = BankedPlan(self.found.baseline_plan, base.median_s * 1e3, base.median_s * 1e3,
                                 self._bandwidth(), time.time())
            try:
                if revoke(KnowledgeBase(bank_root(), "gdat"), self.ctx.key, plan, verdict):
                    log.info("knowledge base: the entry now holds the user's configuration")
                    self.bank_outcome = "unsatisfied"
            except (OSError, GdatError) as e:
                log.warn(f"cannot record the switch back in the knowledge base ({e})")
        else:
            which = "user configuration" if self.verdict.winner is None else "adopted plan"
            log.info(f"tune: steady state of the {which}: {window.median_s * 1e3:.2f} ms over "
                     f"{len(window.step_s)} steps (confirmed)")
        self.report = self._report(window, reverted)
        if self.report_path is not None:
            self.report_path = write_report(self.report, self.ctx.config.work_path, self.report_path)
        self.outcome = self.report.outcome + (f"; report {self.report_path}" if self.report_path else "")
