"""Progress and summaries on stderr, from rank 0 only (warnings from every rank)."""
from __future__ import annotations

import os
import sys

import torch.distributed as dist

__all__ = ["rank", "info", "warn"]


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
