"""Stages 4-5 of the tuning loop on rank 0: keep the decision and tell it.

At the decision (:meth:`TuneResult.keep`) the winner, or the user's configuration
as the verdict, goes into the knowledge base under its lock
(:func:`gdat.bank.plans.keep`, which judges add / update / reserved / unsatisfied
against what is stored by then) and the report and chart are written, with the
estimate from the paired blocks: the winner's step is ``m_base + D_w`` seconds
(``m_base`` the baseline blocks' median, ``D_w`` the winner's paired difference,
:func:`gdat.decide.verdict.standings`).  After the steady-state confirmation
(:meth:`TuneResult.settle`) the report is rewritten with the steady-state median
and the paired check (:func:`gdat.decide.confirm.steady_state_check`), and an adopted
plan that did not hold is revoked in the bank (:func:`gdat.bank.plans.swap`).

A plan on trial (:attr:`gdat.decide.verdict.Verdict.trial`: it led by less than the
noise) is not kept at the decision: the report says the user's configuration
stays, and the bank keeps the user's configuration as the verdict, as when no
candidate leads at all, so a script that ends before the confirmation still
saves its tuning.  Confirmed, the plan (measured by its steady-state window)
replaces that entry (:func:`gdat.bank.plans.swap`).
"""
from __future__ import annotations

import atexit
import time
from dataclasses import dataclass, field

from gdat.core import log
from gdat.report.aoe_file import improvement_percent
from gdat.tune.construction import TuneContext
from gdat.decide.verdict import BASELINE, Block, Verdict, baseline_median_s, standing_of
from gdat.decide.confirm import Confirmation, kept
from gdat.errors import GdatError
from gdat.schedule.find_unused import FindUnusedCost
from gdat.bank.store import KnowledgeBase
from gdat.decide.windows import WindowStats, pooled
from gdat.report.outcome import Outcome
from gdat.core.plan import BucketPlan
from gdat.bank.plans import BankedPlan, keep, swap
from gdat.report.gdat_report import GdatReport, compression_section, tuning_report, write_report
from gdat.report.chart import write_chart
from gdat.schedule.candidates import Candidates, Correction, RankedPlan
from gdat.options import bank_root
from gdat.core.profile import Profile

__all__ = ["TuneResult"]


@dataclass
class TuneResult:
    """What one tuning run measured and decided (fixed at the decision), and what
    was kept and written of it since."""

    ctx: TuneContext
    profile: Profile
    found: Candidates
    plans: list[RankedPlan]
    blocks: list[Block]
    verdict: Verdict
    decision_step: int
    correction: Correction
    began: float
    squeeze_errors: dict[int, dict[int, float]] = field(default_factory=dict)
    find_unused: FindUnusedCost | None = None
    bank_outcome: str = "unsatisfied"
    bank_entry: str | None = None
    report: GdatReport | None = None
    report_path: str | None = None
    check: Confirmation | None = None  # the steady-state check, once taken after an adoption

    @property
    def reverted(self) -> bool:
        """Whether the steady-state check switched the adopted plan back."""
        return self.check is not None and not self.check.holds

    @property
    def winner(self) -> RankedPlan | None:
        return None if self.verdict.winner is None else self.plans[self.verdict.winner]

    @property
    def adopted(self) -> RankedPlan | None:
        """The plan that runs and is kept: the winner, unless it was switched back or
        is on trial and not confirmed (yet)."""
        i = kept(self.verdict, self.check)
        return None if i is None else self.plans[i]

    def summary(self) -> str:
        """The report's outcome and where it is."""
        if self.report is None:
            return "decided; nothing was saved"
        return self.report.outcome + (f"; report {self.report_path}" if self.report_path else "")

    def outcome(self) -> Outcome:
        """The done line's clause: the report's outcome and the plan that runs."""
        report = self.report
        runs = report.chosen.get("label", "the user configuration") if report else "nothing kept"
        return Outcome(f"tuned ({report.outcome if report else 'decided'}: {runs})", self.ctx.config.work_path,
                       self.report_path)

    def keep(self) -> None:
        """Keep the decision in the bank (for a plan on trial, the user's configuration
        until the confirmation), write the report, say so; the chart comes at the end
        of the process (:meth:`_write_chart`)."""
        winner, m_base = self.adopted, baseline_median_s(self.blocks)
        result_s = m_base if winner is None else m_base + standing_of(self.blocks, self.verdict.winner).diff_s
        self.bank_outcome, self.bank_entry = self._save(
            winner, result_s, None if winner is None else self._windows(self.verdict.winner))
        self.report = self._report(None, None)
        base_ms, result_ms = self.report.baseline_ms, self.report.result_ms
        if self.verdict.trial:
            log.info(f"tune: trying {self.winner.plan.label} in steady state against baseline {base_ms:.2f} ms: "
                     f"{self.verdict.reason}; the user configuration stays in the knowledge base unless it is "
                     f"confirmed")
        else:
            change = f"step time {(result_ms - base_ms) / base_ms * 100:+.1f}%, AOE improvement " \
                f"{improvement_percent(base_ms, result_ms)}" if winner else "kept"
            log.info(f"tune: {self.report.outcome}: {winner.plan.label if winner else 'user configuration'} "
                     f"{result_ms:.2f} ms vs baseline {base_ms:.2f} ms in paired blocks ({change}); "
                     f"{self.verdict.reason}")
        self.report_path = write_report(self.report, self.ctx.config.work_path)
        if self.report_path is not None:
            atexit.register(self._write_chart)

    def _write_chart(self) -> None:
        """The before/after chart next to the report, of the plan that runs (the
        user's configuration after a switch back).  Drawn when the process ends:
        importing matplotlib and drawing take about a second, which would stall a
        training step."""
        if self.report_path is not None:
            write_chart(self.report_path, self.profile, self.found, self.adopted)

    def settle(self, window: WindowStats, check: Confirmation | None) -> None:
        """Record the steady state (``check``: an adopted plan's paired check against
        the baseline around it): revoke a plan that did not hold, bank a confirmed
        plan on trial, rewrite the report."""
        self.check = check
        base = self._windows(BASELINE)
        user = BankedPlan(self.found.baseline_plan, base.median_s * 1e3, base.median_s * 1e3, self._bandwidth(),
                          time.time())
        what = "plan on trial" if self.verdict.trial else "adopted plan"
        if self.reverted:
            plan = self.winner.plan
            log.warn(f"steady state: the {what} {plan.label} ran {window.median_s * 1e3:.2f} ms against "
                     f"{check.reference_s * 1e3:.2f} ms for the user's configuration measured around it, not faster "
                     f"beyond the noise ({check.threshold_s * 1e3:.2f} ms); switched back to the user's configuration")
            if not self.verdict.trial and self._swap(plan, user):
                log.info("knowledge base: the entry now holds the user's configuration")
                self.bank_outcome = "unsatisfied"
        elif check is not None:
            log.info(f"tune: steady state of the {what}: {window.median_s * 1e3:.2f} ms over {len(window.step_s)} "
                     f"steps against {check.reference_s * 1e3:.2f} ms for the user's configuration measured around "
                     f"it (confirmed{'; adopted' if self.verdict.trial else ''})")
            if self.verdict.trial:
                self._bank_trial(window, user)
        else:
            log.info(f"tune: steady state of the user configuration: {window.median_s * 1e3:.2f} ms over "
                     f"{len(window.step_s)} steps")
        self._rewrite_report(window, check)

    def _bank_trial(self, window: WindowStats, user: BankedPlan) -> None:
        """A confirmed plan on trial replaces the user's configuration this run kept
        at the decision; without that entry (another job's plan was stored), it is
        kept by the bank's usual rule."""
        won = self.winner
        entry = BankedPlan(won.plan, user.baseline_ms, window.median_s * 1e3, user.bandwidth_bytes_per_s,
                           time.time())
        if self.bank_entry is None:
            self.bank_outcome, self.bank_entry = self._save(won, window.median_s, window)
        elif self._swap(self.found.baseline_plan, entry):
            log.info(f"knowledge base: saved {self.bank_entry}")
            self.bank_outcome = "add"
        else:
            self.bank_outcome, self.bank_entry = "reserved", None

    def _swap(self, held: BucketPlan, replacement: BankedPlan) -> bool:
        """:func:`gdat.bank.plans.swap` on this run's entry; a bank that cannot be
        written is warned about."""
        try:
            return swap(KnowledgeBase(bank_root(), "gdat"), self.ctx.key, held, replacement)
        except (OSError, GdatError) as e:
            log.warn(f"cannot change the entry in the knowledge base ({e})")
            return False

    def _rewrite_report(self, window: WindowStats, check: Confirmation | None) -> None:
        self.report = self._report(window, check)
        if self.report_path is not None:
            self.report_path = write_report(self.report, self.ctx.config.work_path, self.report_path)

    def _windows(self, plan: int) -> WindowStats:
        return pooled([b.window for b in self.blocks if b.plan == plan])

    def _report(self, steady: WindowStats | None, check: Confirmation | None) -> GdatReport:
        report = tuning_report(self.ctx.tuning_name, time.time() - self.began, self.decision_step + 1, self.verdict,
                               self.blocks, self.plans, self.found, self.correction, self.bank_outcome,
                               self.bank_entry, self.ctx.cost, self.ctx.topology, steady, check)
        if self.find_unused is not None:
            report.extra["find_unused_parameters_cost"] = self.find_unused.to_dict()
        if self.squeeze_errors:
            report.extra["compression"] = compression_section(self.ctx.compress, self.plans, self.squeeze_errors)
        return report

    def _save(self, winner: RankedPlan | None, result_s: float,
              winner_window: WindowStats | None) -> tuple[str, str | None]:
        """Keep the winner (or the user's configuration as the verdict) in the bank,
        ``result_s`` and ``winner_window`` what it measured; returns the outcome and
        the entry's path if it was written.  When the bank cannot be written, the
        outcome is judged by what construction found."""
        found, base = self.found, self._windows(BASELINE)
        plan = found.baseline_plan if winner is None else winner.plan
        entry = BankedPlan(plan, base.median_s * 1e3, result_s * 1e3, self._bandwidth(), time.time())
        measured = [(found.baseline_plan, base),
                    *((self.plans[i].plan, self._windows(i)) for i in sorted({b.plan for b in self.blocks} - {BASELINE}))]
        try:
            bank = KnowledgeBase(bank_root(), "gdat")
            settled = keep(bank, self.ctx.key, entry, winner is not None, found.timeline.layout, measured,
                           None if winner is None else winner_window)
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
