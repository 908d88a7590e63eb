"""Progress and summaries on stderr, from rank 0 only (warnings from every rank)."""
from __future__ import annotations

import os
import sys

import torch.distributed as dist

__all__ = ["rank", "info", "warn", "show_warnings_as_lines"]


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
