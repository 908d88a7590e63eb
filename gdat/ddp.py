"""``gdat.DistributedDataParallel``: stock DDP whose gradient buckets gdat tunes.

A subclass of ``torch.nn.parallel.DistributedDataParallel`` taking the same
arguments plus ``gdat_config`` (default: from ``GDAT_*`` variables, see
:mod:`gdat.config`).  ``gdat-run`` substitutes it for stock DDP in an unmodified
script.  A synchronised training step starts at each forward with grad enabled
outside ``no_sync()``; at that moment the mode's controller may act (record,
switch plans, decide), always on the same step on every rank.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Protocol

import torch

from gdat.config import GdatConfig

__all__ = ["DistributedDataParallel", "STOCK_DDP"]

STOCK_DDP = torch.nn.parallel.DistributedDataParallel


class Controller(Protocol):
    done: bool  # nothing left to do: forward no longer calls it

    def before_step(self) -> None: ...

    def after_forward(self, output: Any) -> None: ...


class DistributedDataParallel(STOCK_DDP):
    """Drop-in DDP with online gradient-bucket tuning (see the module docstring)."""

    def __init__(self, module: torch.nn.Module, *args: Any, gdat_config: GdatConfig | None = None,
                 **kwargs: Any) -> None:
        config = gdat_config or GdatConfig.from_env()
        if config.aoe_bank:
            import aoe_full

            module = aoe_full.apply_bank(module)
        make: Callable[[STOCK_DDP], Controller | None] | None = None
        if config.mode != "off":
            from gdat.online import check_model_across_ranks

            check_model_across_ranks(module, args, kwargs)
        if config.mode == "profile":
            from gdat.profile_job import ProfileJob

            make = functools.partial(ProfileJob, config=config)
        elif config.mode in ("tune", "apply") or config.plan:
            from gdat.online import prepare_construction

            prepared = prepare_construction(module, args, kwargs, config)
            kwargs, make = prepared.kwargs, prepared.make
        super().__init__(module, *args, **kwargs)
        self._gdat_config = config
        self._gdat: Controller | None = make(self) if make is not None else None

    def __getstate__(self) -> dict[str, Any]:
        """Stock DDP's state without gdat's controller and comm hooks: a deep copy or
        an unpickled instance is a stock-behaving DDP (``_gdat`` is ``None``) with the
        user's comm hooks, as stock DDP keeps them; tuning stays with the original."""
        state = super().__getstate__()
        state["_gdat"] = None
        state["_comm_hooks"] = [(hook, hook_state) for hook, hook_state in state.get("_comm_hooks", [])
                                if not getattr(hook, "__module__", "").startswith("gdat.")]
        return state

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        """Stock DDP's forward; at the start of a synchronised step the controller
        acts.  Under ``torch.compile`` Dynamo traces this forward as it traces stock
        DDP's, except the controller's two calls, which run eagerly (they measure,
        communicate and switch plans): each is a graph break."""
        ctl = self._gdat
        if ctl is None or ctl.done or not (torch.is_grad_enabled() and self.require_backward_grad_sync):
            return super().forward(*inputs, **kwargs)
        _before_step(ctl)
        output = super().forward(*inputs, **kwargs)
        _after_forward(ctl, output)
        return output


@torch.compiler.disable
def _before_step(ctl: Controller) -> None:
    ctl.before_step()


@torch.compiler.disable
def _after_forward(ctl: Controller, output: Any) -> None:
    ctl.after_forward(output)
