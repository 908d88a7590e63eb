"""The bank update a tuning decision makes (:class:`gdat.decide.record.Decision`), on rank 0.

At the decision (:func:`keep_decision`) the plan that runs goes into the knowledge
base under its lock (:func:`gdat.bank.plans.keep`, which judges add / update /
reserved / unsatisfied against what is stored by then), with the evidence the
decision rests on, whether it is confident, and the profile the candidates came
from.  An adopted plan counts as a win; the user's configuration, or the leader of
inconclusive evidence running on trial, is kept as the verdict (unsatisfied), so a
script that ends before the confirmation still saves its tuning and its evidence.

After the steady-state confirmation (:func:`keep_confirmation`) the entry this
run wrote is replaced (:func:`gdat.bank.plans.swap`) by what the confirmation
settled: the plan that runs now (the user's configuration after a switch back),
the evidence grown by the window, confident or not.  A plan on trial adopted by
the test counts as added; an adopted plan switched back leaves the user's
configuration (unsatisfied), and one whose window left the evidence inconclusive
is kept as a plan on trial (unsatisfied: the next launch measures again).  Without an entry this run wrote (another job's plan
was stored), the confirmed result is kept by the bank's usual rule.

An entry stores the medians the decision measured (:attr:`Decision.baseline_s`,
:attr:`Decision.result_s`) and the link bandwidth of the job's allreduce fit
(:attr:`gdat.core.cost_model.AllreduceCostModel.bandwidth_bytes_per_s`, the same
quantity the lookup compares it with).  A bank that cannot be read or written is
warned about; the outcome is then judged by what construction found.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gdat.bank.plans import BankedPlan, keep, swap
from gdat.bank.store import KnowledgeBase
from gdat.core import log
from gdat.core.plan import BucketPlan
from gdat.decide.record import Decision
from gdat.errors import GdatError

__all__ = ["Kept", "keep_decision", "keep_confirmation"]


@dataclass(frozen=True)
class Kept:
    """What the bank holds of a decision: the AOE outcome (add, update, reserved,
    unsatisfied), the entry's path where this run wrote it (``None``: it did not)
    and the plan written there."""

    outcome: str
    entry: str | None
    plan: BucketPlan | None = None


def _entry(d: Decision) -> BankedPlan:
    return BankedPlan(d.runs, d.baseline_s * 1e3, d.result_s * 1e3, d.ladder.bandwidth_bytes_per_s, time.time(),
                      d.confident, d.evidence, d.profile)


def keep_decision(root: str, key: dict[str, Any], stored: BucketPlan | None, d: Decision) -> Kept:
    """Keep ``d`` in the bank at ``root`` under ``key`` (module docstring); ``stored``
    is the plan construction found under the key (``REPEAT_TUNE``), if any."""
    won = d.adopted is not None
    entry = _entry(d)
    try:
        bank = KnowledgeBase(root, "gdat")
        settled = keep(bank, key, entry, won, d.found.timeline.layout, d.measured(),
                       d.running_window if won else None)
    except (OSError, GdatError) as e:
        log.warn(f"cannot save the plan in the knowledge base ({e})")
        return Kept("reserved" if stored is not None else "add" if won else "unsatisfied", None)
    if not settled.written:
        if stored is None:
            log.info("knowledge base: keeping the plan another job stored meanwhile")
        return Kept(settled.outcome, None)
    path = bank.path_for(key)
    log.info(f"knowledge base: saved {path}" + ("" if d.confident else " (evidence inconclusive: the next "
                                                                         "launch measures again)"))
    return Kept(settled.outcome, path, entry.plan)


def keep_confirmation(root: str, key: dict[str, Any], stored: BucketPlan | None, d: Decision,
                      before: Kept) -> Kept:
    """The bank after ``d``'s confirmation (module docstring); ``before`` is what
    :func:`keep_decision` kept."""
    if before.entry is None:
        if d.verdict.trial and d.adopted is not None:
            return keep_decision(root, key, stored, d)
        return before
    entry = _entry(d)
    try:
        replaced = swap(KnowledgeBase(root, "gdat"), key, before.plan, entry)
    except (OSError, GdatError) as e:
        log.warn(f"cannot change the entry in the knowledge base ({e})")
        return before
    if not replaced:
        return Kept("reserved", None)
    if d.adopted is None:
        if before.outcome in ("add", "update"):
            held = "the user's configuration" if d.running is None else \
                f"{d.running.plan.label} on trial, its evidence inconclusive"
            log.info(f"knowledge base: the entry now holds {held}")
        return Kept("unsatisfied", before.entry, entry.plan)
    if before.outcome not in ("add", "update"):
        log.info(f"knowledge base: saved {before.entry}")
        return Kept("add", before.entry, entry.plan)
    return Kept(before.outcome, before.entry, entry.plan)
