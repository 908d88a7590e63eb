"""Progress and summaries on stderr, from rank 0 only (warnings from every rank)."""
from __future__ import annotations

import atexit
import os
import sys
import weakref
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


def warn_at_exit(controller: Any) -> None:
    """At exit, call ``controller._warn_if_incomplete()`` if it still exists, without
    keeping it (and the DDP and process group it holds) alive until interpreter
    shutdown, where a late gloo teardown can abort the process."""
    ref = weakref.ref(controller)

    def check() -> None:
        live = ref()
        if live is not None:
            live._warn_if_incomplete()

    atexit.register(check)
