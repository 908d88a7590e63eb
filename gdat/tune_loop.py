"""The tuning loop of ``--gdat-mode tune``, on the user's own training steps.

Every step is a real training step.  The loop acts at the start of a step (the
entry of gdat's DDP forward), always at a step index every rank knows (the
schedule of :mod:`gdat.measure`), so ranks never diverge:

1. baseline: the user's configuration, measured (:func:`gdat.measure.gather_window`);
2. profile: compute-only steps (allreduce deferred, gradients still averaged) and
   overlapped steps, traced by gdat's comm hook (:mod:`gdat.profiling.session`);
3. generate: rank 0 fits the model and ranks the candidates
   (:func:`gdat.schedule.candidates.generate_candidates`), every rank receives them;
4. verify: switch to each candidate in turn (:func:`gdat.plan_switch.switch_buckets`)
   and measure it;
5. decide: rank 0 adopts the fastest candidate only if it beats the baseline by
   more than the measured noise (:func:`gdat.decide.decide`), else the user's
   configuration stays; every rank switches to the decision;
6. keep: rank 0 records the result in the knowledge base under its lock
   (:func:`gdat.plan_bank.keep`) and writes the report and chart (:mod:`gdat.report`).

With ``--gdat-compress`` the last candidate may compress buckets
(:func:`gdat.schedule.candidates.with_compressed_candidate`): while it is switched
in, gdat's compression hook runs (:mod:`gdat.compression`), with the error probe
on for its transition and first measured step (which already pays DDP's bucket
rebuild); it wins only by beating the fastest exact configuration
(:func:`gdat.decide.decide_lossy_last`).
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist

from gdat import compression, log
from gdat.aoe_result import improvement_percent
from gdat.collectives import broadcast_from_first
from gdat.construction import TuneContext
from gdat.ddp_internals import comm_hooks
from gdat.ddp_model import WeakAttribute, process_group_of
from gdat.decide import Verdict, decide_lossy_last
from gdat.errors import GdatError, PlanError, ProfileError
from gdat.knowledge_base import KnowledgeBase
from gdat.measure import Schedule, StepTimer, WindowStats, gather_window, plan_schedule
from gdat.plan import BucketPlan
from gdat.plan_bank import BankedPlan, keep
from gdat.plan_switch import ddp_bucket_arguments, switch_buckets
from gdat.profiling.session import ProfileSession
from gdat.report import compression_section, tuning_report, write_chart, write_report
from gdat.schedule.candidates import Candidates, RankedPlan, generate_candidates, with_compressed_candidate
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
        self.schedule: Schedule = plan_schedule(c.max_tune_steps, c.top_k, c.warmup_steps, profile=c.profile_steps)
        self.timer = StepTimer()
        self.session: ProfileSession | None = None
        self.done = False
        self.outcome = "nothing was saved"
        self.began = time.time()
        self.baseline: WindowStats | None = None
        self.profile: Profile | None = None
        self.found: Candidates | None = None
        self.measured: list[WindowStats] = []
        self.squeeze_errors: dict[int, dict[int, float]] = {}
        self._probe_until = -1
        if self.schedule.candidates == 0:
            log.warn(f"--gdat-max-tune-steps {c.max_tune_steps} leaves no room for a candidate "
                     f"(needs at least {self.schedule.candidate_switch(1) + 1}); not tuning")
            self.done = True
        else:
            log.info(f"tune: knowledge base {'re-tune (REPEAT_TUNE)' if ctx.stored else 'miss'}; tuning in "
                     f"steps 0..{self.schedule.total - 1} (up to {self.schedule.candidates} candidates)")
        log.warn_at_exit(self)

    @property
    def candidates(self) -> tuple[RankedPlan, ...]:
        """The candidates being measured (none before generation)."""
        return self.found.ranked if self.found is not None else ()

    def _warn_if_incomplete(self) -> None:
        if not self.done:
            log.warn(f"tuning incomplete: the script ended after {self.timer.steps} steps; tuning needs "
                     f"{self.schedule.total} (lower --gdat-max-tune-steps); nothing was saved")

    def interrupted_summary(self) -> str:
        """The Ctrl-C line: where tuning stood and what was saved."""
        if not self.done:
            return f"interrupted at step {self.timer.steps} while tuning (it needed {self.schedule.total} steps); " \
                "nothing was saved"
        return f"interrupted at step {self.timer.steps}, after tuning had finished ({self.outcome})"

    # --- the loop: what happens at the start of each step -----------------------
    def before_step(self) -> None:
        s, sched = self.timer.tick(), self.schedule
        if s == self._probe_until:
            compression.installed(self.ddp).probe = False
        if s == sched.baseline_steps.stop:
            self._measure_baseline()
            if self.done:
                return
        if s in sched.compute_steps or s in sched.overlap_steps:
            self.session.begin_step("compute" if s in sched.compute_steps else "overlap")
        elif s == sched.overlap_steps.stop:
            self._generate()
        else:
            ended = sched.candidate_ending_at(s)
            if ended is not None:
                self._measure_candidate(ended)

    def after_forward(self, output: Any) -> None:
        if self.session is not None:
            self.session.end_forward(output)

    # --- 1, 2: baseline and profile ---------------------------------------------
    def _measure_baseline(self) -> None:
        self.baseline = gather_window(self.timer, self.schedule.baseline_steps, self.group)
        log.info(f"tune: baseline (user configuration) median {self.baseline.median_s * 1e3:.2f} ms "
                 f"over {len(self.baseline.step_s)} steps")
        if comm_hooks(self.ddp):
            log.warn("a comm hook is registered on this DDP: gdat cannot trace it; not tuning")
            self.done = True
            return
        self.session = ProfileSession(self.ddp)

    # --- 3: generate ---------------------------------------------------------------
    def _generate(self) -> None:
        self.session.recorder.start_step()
        self.profile = self.session.finish(self.ctx.cost, {"source": "gdat online tuner"})
        self.session = None
        found = None
        if self.rank == 0:
            try:
                found = generate_candidates(self.profile, self.ctx.cost, self.schedule.candidates, self.ctx.stored)
                if self.ctx.compress:
                    found = with_compressed_candidate(found, self.ctx.compress, self.schedule.candidates)
                log.info(f"tune: {found.describe()}")
            except (ProfileError, PlanError) as e:
                log.warn(f"cannot build candidate plans ({e}); not tuning")
        found = broadcast_from_first(found, self.group)
        if found is None:
            switch_buckets(self.ddp, **self.ctx.user_bucket_args)
            self.done = True
            return
        self.found = found
        if not found.ranked:
            log.info("tune: every plan the search generated buckets gradients like the user's configuration")
            self._finish()
            return
        self.schedule = replace(self.schedule, candidates=len(found.ranked))
        self._switch_to_candidate(0)

    # --- 4: verify -------------------------------------------------------------------
    def _switch_to_candidate(self, i: int) -> None:
        c = self.candidates[i]
        log.info(f"tune: candidate {i + 1}/{len(self.candidates)} {c.plan.label} "
                 f"({len(c.plan.buckets)} buckets): predicted {c.sim.step_s * 1e3:.2f} ms")
        self._apply(c.plan, probe=True)
        if c.plan.compressed:
            self._probe_until = self.schedule.candidate_steps(i).start + 1

    def _apply(self, plan: BucketPlan, probe: bool = False) -> None:
        """Switch to ``plan``: its buckets, and gdat's compression hook exactly when
        it compresses some (probing the error when ``probe``)."""
        compression.forget(self.ddp)
        switch_buckets(self.ddp, **ddp_bucket_arguments(plan, self.found.timeline.layout))
        if plan.compressed:
            compression.install(self.ddp, plan).probe = probe

    def _measure_candidate(self, i: int) -> None:
        self.measured.append(gather_window(self.timer, self.schedule.candidate_steps(i), self.group))
        c = self.candidates[i]
        if c.plan.compressed:
            self.squeeze_errors[i] = dict(compression.installed(self.ddp).errors)
        log.info(f"tune: candidate {i + 1}/{len(self.candidates)} {c.plan.label}: measured "
                 f"{self.measured[-1].median_s * 1e3:.2f} ms (predicted {c.sim.step_s * 1e3:.2f} ms)")
        if i + 1 < len(self.candidates):
            self._switch_to_candidate(i + 1)
        else:
            self._finish()

    # --- 5: decide -------------------------------------------------------------------
    def _finish(self) -> None:
        """Decide (rank 0), switch every rank to the decision, keep and report."""
        lossy = [c.plan.compressed for c in self.candidates]
        verdict = broadcast_from_first(decide_lossy_last(self.baseline, self.measured, lossy) if self.rank == 0
                                       else None, self.group)
        if verdict.winner is None:
            compression.forget(self.ddp)
            switch_buckets(self.ddp, **self.ctx.user_bucket_args)
        elif verdict.winner != len(self.candidates) - 1:
            self._apply(self.candidates[verdict.winner].plan)
        self.done = True
        if self.rank == 0:
            self._keep(verdict)

    # --- 6: keep -----------------------------------------------------------------------
    def _keep(self, verdict: Verdict) -> None:
        found, base = self.found, self.baseline
        winner = None if verdict.winner is None else self.candidates[verdict.winner]
        result = base if verdict.winner is None else self.measured[verdict.winner]
        outcome, bank_entry = self._save(winner, result)
        report = tuning_report(self.ctx.tuning_name, time.time() - self.began, self.schedule.total, verdict, base,
                               found, self.measured, outcome, bank_entry, self.ctx.cost, self.ctx.topology)
        base_ms, result_ms = report.baseline_ms, report.result_ms
        change = f"step time {(result_ms - base_ms) / base_ms * 100:+.1f}%, AOE improvement " \
            f"{improvement_percent(base_ms, result_ms)}" if winner else "kept"
        log.info(f"tune: {report.outcome}: {winner.plan.label if winner else 'user configuration'} "
                 f"{result_ms:.2f} ms vs baseline {base_ms:.2f} ms ({change}); {verdict.reason}")
        if self.squeeze_errors:
            report.extra["compression"] = compression_section(self.ctx.compress, self.candidates, self.squeeze_errors)
        path = write_report(report, self.ctx.config.work_path)
        self.outcome = report.outcome + (f"; report {path}" if path else "")
        if path is not None:
            write_chart(path, self.profile, found, winner)

    def _save(self, winner: RankedPlan | None, result: WindowStats) -> tuple[str, str | None]:
        """Keep the winner (or the user's configuration as the verdict) in the bank;
        returns the outcome and the entry's path if it was written.  When the bank
        cannot be written, the outcome is judged by what construction found."""
        found, base = self.found, self.baseline
        plan = found.baseline_plan if winner is None else winner.plan
        entry = BankedPlan(plan, base.median_s * 1e3, result.median_s * 1e3,
                           1.0 / max(self.ctx.cost.beta_s_per_byte, 1e-15), time.time())
        measured = [(found.baseline_plan, base), *((c.plan, m) for c, m in zip(found.ranked, self.measured))]
        try:
            bank = KnowledgeBase(bank_root(), "gdat")
            settled = keep(bank, self.ctx.key, entry, winner is not None, found.timeline.layout, measured,
                           None if winner is None else result)
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
