"""The bank update a tuning decision makes (:class:`gdat.decide.record.Decision`), on rank 0.

At the decision (:func:`keep_decision`) the adopted plan, or the user's
configuration as the verdict, goes into the knowledge base under its lock
(:func:`gdat.bank.plans.keep`, which judges add / update / reserved / unsatisfied
against what is stored by then).  A plan on trial (it led by less than the noise)
is not kept at the decision: the user's configuration is, as when no candidate
leads at all, so a script that ends before the confirmation still saves its
tuning.

After the steady-state confirmation (:func:`keep_confirmation`):

* an adopted plan the check switched back gives way to the user's configuration
  (:func:`gdat.bank.plans.swap`);
* a confirmed plan on trial replaces the user's configuration this run kept at the
  decision (measured by its steady-state window); without that entry (another
  job's plan was stored, or this run kept none), it is kept by the bank's usual
  rule.

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
    unsatisfied) and the entry's path where this run wrote it (``None``: it did not)."""

    outcome: str
    entry: str | None


def _entry(d: Decision, plan: BucketPlan, result_s: float) -> BankedPlan:
    return BankedPlan(plan, d.baseline_s * 1e3, result_s * 1e3, d.ladder.bandwidth_bytes_per_s, time.time())


def keep_decision(root: str, key: dict[str, Any], stored: BucketPlan | None, d: Decision) -> Kept:
    """Keep ``d`` in the bank at ``root`` under ``key`` (module docstring); ``stored``
    is the plan construction found under the key (``REPEAT_TUNE``), if any."""
    adopted = d.adopted
    entry = _entry(d, d.runs, d.result_s)
    try:
        bank = KnowledgeBase(root, "gdat")
        settled = keep(bank, key, entry, adopted is not None, d.found.timeline.layout, d.measured(),
                       d.adopted_window)
    except (OSError, GdatError) as e:
        log.warn(f"cannot save the plan in the knowledge base ({e})")
        return Kept("reserved" if stored is not None else "add" if adopted else "unsatisfied", None)
    if not settled.written:
        if stored is None:
            log.info("knowledge base: keeping the plan another job stored meanwhile")
        return Kept(settled.outcome, None)
    path = bank.path_for(key)
    log.info(f"knowledge base: saved {path}")
    return Kept(settled.outcome, path)


def keep_confirmation(root: str, key: dict[str, Any], stored: BucketPlan | None, d: Decision,
                      before: Kept) -> Kept:
    """The bank after ``d``'s confirmation (module docstring); ``before`` is what
    :func:`keep_decision` kept."""
    user = _entry(d, d.found.baseline_plan, d.baseline_s)
    if d.reverted:
        if not d.verdict.trial and _swap(root, key, d.winner.plan, user):
            log.info("knowledge base: the entry now holds the user's configuration")
            return Kept("unsatisfied", before.entry)
        return before
    if not (d.verdict.trial and d.adopted is not None):
        return before
    if before.entry is None:
        return keep_decision(root, key, stored, d)
    if _swap(root, key, d.found.baseline_plan, _entry(d, d.adopted.plan, d.result_s)):
        log.info(f"knowledge base: saved {before.entry}")
        return Kept("add", before.entry)
    return Kept("reserved", None)


def _swap(root: str, key: dict[str, Any], held: BucketPlan, replacement: BankedPlan) -> bool:
    """:func:`gdat.bank.plans.swap` on this run's entry; a bank that cannot be
    written is warned about."""
    try:
        return swap(KnowledgeBase(root, "gdat"), key, held, replacement)
    except (OSError, GdatError) as e:
        log.warn(f"cannot change the entry in the knowledge base ({e})")
        return False
