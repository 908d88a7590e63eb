"""Progress and summaries on stderr, from rank 0 only (warnings from every rank)."""
from __future__ import annotations

import atexit
import os
import sys
from typing import Any

import torch.distributed as dist

__all__ = ["rank", "info", "warn", "warn_at_exit", "interrupted_summary", "show_warnings_as_lines"]

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


_watched: list[Any] = []
_registered = False


def warn_at_exit(controller: Any) -> None:
    """At exit, call ``controller._warn_if_incomplete()``.

    The controller is kept until then even when the script has dropped its DDP
    (controllers refer to their DDP by weak reference, so this keeps neither the
    DDP nor its reducer alive); the list is emptied at exit, before interpreter
    teardown, so nothing it holds is left for a late gloo teardown."""
    global _registered
    if not _registered:
        atexit.register(_check_watched)
        _registered = True
    _watched[:] = [c for c in _watched if not c.done]
    _watched.append(controller)


def _check_watched() -> None:
    while _watched:
        controller = _watched.pop(0)
        if not _interrupted:
            controller._warn_if_incomplete()


def interrupted_summary() -> str:
    """What gdat had done when the script was interrupted (Ctrl-C), for the one
    line the worker prints: the first watched controller's ``interrupted_summary()``.
    The at-exit warnings of :func:`warn_at_exit` are not given after this line."""
    global _interrupted
    _interrupted = True
    for controller in _watched:
        if hasattr(controller, "interrupted_summary"):
            return controller.interrupted_summary()
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
