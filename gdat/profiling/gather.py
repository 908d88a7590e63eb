"""Gather every rank's recorded steps into one :class:`Profile` on every rank
(:func:`gather_profile`), or keep one rank's alone (:func:`local_profile`)."""
from __future__ import annotations

import socket
from typing import Any, Sequence

import torch
import torch.distributed as dist

from gdat.core.cost_model import AllreduceCostModel
from gdat.core.layout import READY_ORDER, ParamInfo
from gdat.core.profile import Profile
from gdat.core.timeline import RankTimeline, StepRecord

__all__ = ["gather_profile", "local_profile"]


def gather_profile(
    steps: Sequence[StepRecord],
    params: Sequence[ParamInfo],
    device_type: str,
    group: Any = None,
    cost_model: AllreduceCostModel | None = None,
    meta: dict[str, Any] | None = None,
    bucket_order: str = READY_ORDER,
) -> Profile:
    """All-gather each rank's steps (a collective: every rank must call it);
    ``bucket_order`` is the DDP's rule (:func:`gdat.reducer.ddp_model.bucket_order_of`)."""
    group = group if group is not None else dist.group.WORLD
    rank = dist.get_rank(group)
    world = dist.get_world_size(group)
    local = RankTimeline(rank, socket.gethostname(), tuple(steps)).to_dict()
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, local, group=group)
    ranks = tuple(RankTimeline.from_dict(d, f"rank {k}") for k, d in enumerate(gathered))
    return _profile(ranks, world, str(dist.get_backend(group)), device_type, params, cost_model, dict(meta or {}),
                    bucket_order)


def local_profile(
    steps: Sequence[StepRecord],
    params: Sequence[ParamInfo],
    device_type: str,
    rank: int,
    world_size: int,
    backend: str,
    cost_model: AllreduceCostModel | None = None,
    meta: dict[str, Any] | None = None,
    bucket_order: str = READY_ORDER,
) -> Profile:
    """Rank ``rank``'s steps alone (no collective), for a profile cut short; the
    world size is the job's, and ``meta["ranks_recorded"]`` says whose steps it holds."""
    return _profile((RankTimeline(rank, socket.gethostname(), tuple(steps)),), world_size, backend, device_type,
                    params, cost_model, {**(meta or {}), "ranks_recorded": [rank]}, bucket_order)


def _profile(ranks: tuple[RankTimeline, ...], world_size: int, backend: str, device_type: str,
             params: Sequence[ParamInfo], cost_model: AllreduceCostModel | None, meta: dict[str, Any],
             bucket_order: str) -> Profile:
    return Profile(world_size=world_size, backend=backend, device_type=device_type, torch_version=torch.__version__,
                   params=tuple(params), ranks=ranks, cost_model=cost_model, meta=meta, bucket_order=bucket_order)
