"""Ranks that built different models stop with one line instead of hanging.

Run first in every mode but ``off``, before any other collective of gdat's, so
that ranks that would issue different collectives never start them: every rank sends
``(name, shape, dtype)`` of each parameter in DDP's order to every other
(a collective on DDP's process group), and the first parameter where a rank
differs from rank 0 is named in a :class:`~gdat.errors.ModelMismatchError`.
"""
from __future__ import annotations

from typing import Any

import torch

from gdat.core.collectives import gather_from_all
from gdat.core.layout import ParamInfo
from gdat.errors import ModelMismatchError
from gdat.reducer.ddp_model import ddp_options, options_group, param_infos

__all__ = ["check_same_model", "check_model_across_ranks"]


def check_same_model(params: tuple[ParamInfo, ...], group: Any) -> None:
    """Raise :class:`ModelMismatchError` naming the first parameter that differs
    between rank 0 and any other rank (a collective)."""
    every = gather_from_all([(p.name, p.shape, p.dtype) for p in params], group)
    reference = every[0]
    for rank, other in enumerate(every[1:], start=1):
        for k in range(max(len(reference), len(other))):
            a = reference[k] if k < len(reference) else None
            b = other[k] if k < len(other) else None
            if a != b:
                def show(x):
                    return "nothing" if x is None else f"{x[0]} {list(x[1])} {x[2]}"
                raise ModelMismatchError(
                    f"ranks built different models: parameter #{k} is {show(a)} on rank 0 "
                    f"but {show(b)} on rank {rank}")


def check_model_across_ranks(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    """:func:`check_same_model` for the DDP about to wrap ``module`` (a collective)."""
    check_same_model(param_infos(module), options_group(ddp_options(module, args, kwargs)))
