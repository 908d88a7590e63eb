"""Progress and summaries on stderr, from rank 0 only (warnings from every rank)."""
from __future__ import annotations

import atexit
import os
import sys
import weakref
from typing import Any

import torch.distributed as dist

__all__ = ["rank", "info", "warn", "warn_at_exit", "interrupted_summary", "show_warnings_as_lines"]

_controllers: list[weakref.ref] = []
_interrupted = False


def rank() -> int:
    """This process's global rank (0 before the process group exists)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def info(message: str) -> None:
    """``gdat: message`` on stderr, rank 0 only."""
    if rank() == 0:
        print(f"gdat: {message}", file=sys.stderr, flush=True)


def warn(message: str, all_ranks: bool = False) -> None:
    """``gdat: warning: message`` on stderr (rank 0, or every rank)."""
    if all_ranks or rank() == 0:
        print(f"gdat: warning: {message}", file=sys.stderr, flush=True)


def warn_at_exit(controller: Any) -> None:
    """At exit, call ``controller._warn_if_incomplete()`` if it still exists, without
    keeping it (and the DDP and process group it holds) alive until interpreter
    shutdown, where a late gloo teardown can abort the process."""
    ref = weakref.ref(controller)
    _controllers.append(ref)

    def check() -> None:
        live = ref()
        if live is not None and not _interrupted:
            live._warn_if_incomplete()

    atexit.register(check)


def interrupted_summary() -> str:
    """What gdat had done when the script was interrupted (Ctrl-C), for the one
    line the worker prints: the first live controller's ``interrupted_summary()``.
    The at-exit warnings of :func:`warn_at_exit` are not given after this line."""
    global _interrupted
    _interrupted = True
    for ref in _controllers:
        live = ref()
        if live is not None and hasattr(live, "interrupted_summary"):
            return live.interrupted_summary()
    return "interrupted; nothing was saved"


def show_warnings_as_lines() -> None:
    """Show every :class:`~gdat.errors.GdatWarning` as one ``gdat: warning:`` line
    from the rank that issued it (instead of Python's two lines with a source
    location); other warnings are shown as before."""
    import warnings

    from gdat.errors import GdatWarning

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 (warnings' signature)
        if issubclass(category, GdatWarning):
            warn(str(message), all_ranks=True)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
