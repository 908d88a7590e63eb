"""Progress and summaries on stderr, from rank 0 only (warnings from every rank)."""
from __future__ import annotations

import atexit
import os
import sys
from typing import Any

import torch.distributed as dist

__all__ = ["rank", "info", "warn", "warn_at_exit"]


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
        _watched.pop(0)._warn_if_incomplete()
