"""What gdat did in this process, said in one line when the process ends.

Each gdat DDP leaves one :class:`Outcome`: a clause saying what gdat did with it
(``tuned: ...``, ``applied ...``, ``profiled``, ``not tuned: <why>``), the work path
its files go to and the file it wrote there (report or profile), if any.
Construction records the outcomes it settles itself (:func:`record`; a model
gdat does not tune also gets a ``tuning unsatisfied`` report with the reason,
:func:`untuned`); a controller (the tuning loop, the profile job) is watched
(:func:`watch`) and gives its outcome at the end.

At the end of the process (an ``atexit`` handler, which the worker's
:func:`gdat.worker.end_process` runs too), every watched controller that has not
finished is told (``end_early(write)``: it says what it lacked and, unless the
script failed, :func:`script_failed`, writes what it has), then rank 0 prints the
last of gdat's lines::

    gdat: done: <clause>[; <clause> ...]; outputs in <absolute work path>

After Ctrl-C or an error that ends the job with its own one line (:func:`silence`,
:func:`interrupted_summary`) neither is said.  Under ``gdat-run`` a script that
built no gdat DDP still gets the line (:func:`expect`).
"""
from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass
from typing import Any, Protocol

from gdat.core import log
from gdat.report.gdat_report import untuned_report, write_report

__all__ = ["Outcome", "record", "untuned", "watch", "expect", "script_failed", "silence", "interrupted_summary",
           "done_line"]

_MAX_CLAUSES = 3


@dataclass(frozen=True)
class Outcome:
    """What gdat did with one DDP: ``clause`` (one clause of the done line), the
    ``work_path`` its outputs go to and the file it wrote there (``None``: none)."""

    clause: str
    work_path: str
    written: str | None = None


class Watched(Protocol):
    done: bool  # finished what it set out to do
    watching: bool  # still acting at each step (its outcome may still change)

    def end_early(self, write: bool) -> None: ...

    def outcome(self) -> Outcome: ...


_entries: list[Any] = []  # an Outcome, or a watched controller giving one at the end
_registered = False
_expected = False
_silenced = False
_failed = False


def _register() -> None:
    global _registered
    if not _registered:
        atexit.register(_at_exit)
        _registered = True


def record(outcome: Outcome) -> None:
    """Keep ``outcome`` for the done line (finished controllers are kept by their
    outcome, so nothing here holds a finished tuner's measurements)."""
    _register()
    _entries[:] = [e.outcome() if not isinstance(e, Outcome) and not e.watching else e for e in _entries]
    _entries.append(outcome)


def watch(controller: Watched) -> None:
    """Ask ``controller`` for its outcome at the end, and tell it if it has not
    finished by then.  It is kept until then even when the script has dropped its
    DDP (controllers hold their DDP by weak reference)."""
    record(controller)  # type: ignore[arg-type]


def untuned(reason: str, tuning_name: str, work_path: str, writes: bool, tuning_steps: int = 0) -> Outcome:
    """The outcome of a model gdat does not tune, with its ``tuning unsatisfied``
    report written (where ``writes``: rank 0 of its group)."""
    path = write_report(untuned_report(tuning_name, reason, tuning_steps), work_path) if writes else None
    return Outcome(f"not tuned ({reason})", work_path, path)


def expect() -> None:
    """Say the done line at the end even when no gdat DDP is built (``gdat-run``)."""
    global _expected
    _register()
    _expected = True


def script_failed() -> None:
    """The script raised: at exit, say what was left unfinished but write nothing
    for it (a report of a failed attempt is not a result)."""
    global _failed
    _failed = True


def silence() -> None:
    """The job ends with its own one line (an error): say nothing more at exit."""
    global _silenced
    _silenced = True


def interrupted_summary() -> str:
    """What gdat had done when the script was interrupted (Ctrl-C), for the one
    line the worker prints: the first watched controller's summary.  Nothing more
    is said at exit."""
    silence()
    for entry in _entries:
        if hasattr(entry, "interrupted_summary"):
            return entry.interrupted_summary()
    return "interrupted; nothing was saved"


def done_line(outcomes: list[Outcome], default_work_path: str) -> str:
    """The done line: distinct clauses in order (a repeated one counted), at most
    three and how many more, then the work path(s), absolute."""
    counts: dict[str, int] = {}
    for o in outcomes:
        clause = o.clause + (f", {os.path.basename(o.written)}" if o.written else "")
        counts[clause] = counts.get(clause, 0) + 1
    clauses = [c if n == 1 else f"{c} ({n} models)" for c, n in counts.items()]
    if len(clauses) > _MAX_CLAUSES:
        clauses = [*clauses[:_MAX_CLAUSES], f"and {len(clauses) - _MAX_CLAUSES} more"]
    if not clauses:
        clauses = ["the script built no DistributedDataParallel; nothing to tune"]
    paths = list(dict.fromkeys(os.path.abspath(o.work_path) for o in outcomes)) or \
        [os.path.abspath(default_work_path)]
    return f"done: {'; '.join(clauses)}; outputs in {', '.join(paths)}"


def _work_path() -> str:
    from gdat.options import GdatConfig

    try:
        return GdatConfig.from_env().work_path
    except Exception:  # noqa: BLE001 - the variables were checked at launch; this line must not fail
        return "gdat_work"


def _at_exit() -> None:
    if _silenced:
        return
    outcomes = []
    for entry in _entries:
        if not isinstance(entry, Outcome):
            try:
                if not entry.done:
                    entry.end_early(write=not _failed)
                entry = entry.outcome()
            except Exception as e:  # noqa: BLE001 - the end of a finished script never fails on gdat's account
                log.warn(f"at exit: {type(e).__name__}: {e}")
                continue
        outcomes.append(entry)
    _entries.clear()
    if (outcomes or _expected) and log.rank() == 0:
        print(f"gdat: {done_line(outcomes, _work_path())}", file=sys.stderr, flush=True)
