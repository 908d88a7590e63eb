"""Stages 4-5 of the tuning loop on rank 0: keep a decision and tell it.

At the decision (:meth:`TuneResult.keep`) the record
(:class:`gdat.decide.record.Decision`) goes into the knowledge base
(:func:`gdat.bank.decisions.keep_decision`), its report is written
(:func:`gdat.report.gdat_report.tuning_report`) and one line says what was
decided.  After the steady-state confirmation (:meth:`TuneResult.settle`) the
confirmed record changes the bank (:func:`gdat.bank.decisions.keep_confirmation`),
one line says what the steady state showed, and the report is rewritten; so
again whenever measuring on revises the decision (:meth:`TuneResult.revise`).
The before/after chart is drawn when the process ends, of the plan that runs.
"""
from __future__ import annotations

import atexit
import time
from dataclasses import replace

from gdat.bank.decisions import Kept, keep_confirmation, keep_decision
from gdat.core import log
from gdat.decide.confirm import Confirmation
from gdat.decide.record import Decision
from gdat.decide.sequential import Evidence
from gdat.decide.windows import WindowStats
from gdat.options import bank_root
from gdat.report.aoe_file import improvement_percent
from gdat.report.chart import write_chart
from gdat.report.gdat_report import GdatReport, tuning_report, write_report
from gdat.report.outcome import Outcome
from gdat.tune.context import TuneContext

__all__ = ["TuneResult"]


class TuneResult:
    """One decision on rank 0: the record, what the bank kept of it and its report."""

    def __init__(self, ctx: TuneContext, decision: Decision, began: float) -> None:
        self.ctx, self.decision, self.began = ctx, decision, began
        self.kept = Kept("unsatisfied", None)
        self.report: GdatReport | None = None
        self.report_path: str | None = None

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
        """Keep the decision in the bank, write the report, say so (the chart comes at
        the end of the process, :meth:`_write_chart`)."""
        d = self.decision
        self.kept = keep_decision(bank_root(), self.ctx.key, self.ctx.stored, d)
        self.report = tuning_report(d, self.kept)
        base_ms, result_ms = d.baseline_s * 1e3, d.result_s * 1e3
        if d.verdict.trial:
            log.info(f"tune: running {d.winner.plan.label} on trial against baseline {base_ms:.2f} ms: "
                     f"{d.verdict.reason}; the knowledge base keeps its evidence, inconclusive, until it is settled")
        else:
            change = f"step time {(result_ms - base_ms) / base_ms * 100:+.1f}%, AOE improvement " \
                f"{improvement_percent(base_ms, result_ms)}" if d.adopted else "kept"
            log.info(f"tune: {self.report.outcome}: {d.runs.label if d.adopted else 'user configuration'} "
                     f"{result_ms:.2f} ms vs baseline {base_ms:.2f} ms in paired blocks ({change}); "
                     f"{d.verdict.reason}")
        self.report_path = write_report(self.report, self.ctx.config.work_path)
        if self.report_path is not None:
            atexit.register(self._write_chart)

    def settle(self, window: WindowStats, check: Confirmation | None, evidence: Evidence | None) -> None:
        """Record the steady state (``check``: a running plan's paired check against
        the baseline around it; ``evidence`` with its window), change the bank,
        rewrite the report."""
        d = self.decision = self.decision.confirmed(window, check, time.time() - self.began, evidence)
        what = "plan on trial" if d.verdict.trial else "adopted plan"
        if d.reverted:
            log.warn(f"steady state: the {what} {d.winner.plan.label} ran {window.median_s * 1e3:.2f} ms against "
                     f"{check.reference_s * 1e3:.2f} ms for the user's configuration measured around it, "
                     f"{check.why_switched_back}; "
                     f"switched back to the user's configuration")
        elif check is not None:
            said = {"holds": "confirmed" + ("; adopted" if d.verdict.trial else ""),
                    "continues": "the evidence with this window inconclusive: it runs on, on trial, while measuring "
                                 "goes on"}[check.outcome]
            log.info(f"tune: steady state of the {what}: {window.median_s * 1e3:.2f} ms over {len(window.step_s)} "
                     f"steps against {check.reference_s * 1e3:.2f} ms for the user's configuration measured around "
                     f"it ({said})")
        else:
            log.info(f"tune: steady state of the user configuration: {window.median_s * 1e3:.2f} ms over "
                     f"{len(window.step_s)} steps")
        self.kept = keep_confirmation(bank_root(), self.ctx.key, self.ctx.stored, d, self.kept)
        self.report = tuning_report(d, self.kept)
        if self.report_path is not None:
            self.report_path = write_report(self.report, self.ctx.config.work_path, self.report_path)

    def revise(self, decision: Decision) -> None:
        """Measuring on changed the decision (:mod:`gdat.tune.steady`): keep it in the
        bank, rewrite the report."""
        self.decision = replace(decision, tuning_time_s=time.time() - self.began)
        self.kept = keep_confirmation(bank_root(), self.ctx.key, self.ctx.stored, self.decision, self.kept)
        self.report = tuning_report(self.decision, self.kept)
        if self.report_path is not None:
            self.report_path = write_report(self.report, self.ctx.config.work_path, self.report_path)

    def _write_chart(self) -> None:
        """The before/after chart next to the report, of the plan that runs (the
        user's configuration after a switch back).  Drawn when the process ends:
        importing matplotlib and drawing take about a second, which would stall a
        training step."""
        if self.report_path is not None:
            d = self.decision
            write_chart(self.report_path, d.profile, d.found, d.adopted)
