"""The two object collectives gdat's decisions travel by.

Rank 0 decides and every other rank receives its decision
(:func:`broadcast_from_first`); facts every rank holds are gathered on all of them
(:func:`gather_from_all`).  Both are collectives: every rank of ``group`` calls
them at the same point, which gdat guarantees by acting only at step indices all
ranks know.
"""
from __future__ import annotations

from typing import Any

import torch.distributed as dist

__all__ = ["broadcast_from_first", "gather_from_all"]


def broadcast_from_first(obj: Any, group: Any) -> Any:
    """The first rank of ``group``'s ``obj``, on every rank of ``group``."""
    box = [obj]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0), group=group)
    return box[0]


def gather_from_all(obj: Any, group: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank of ``group``."""
    every: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(every, obj, group=group)
    return every
