"""``gdat.DistributedDataParallel``: stock DDP whose gradient buckets gdat tunes.

A subclass of ``torch.nn.parallel.DistributedDataParallel`` taking the same
arguments plus ``gdat_config`` (default: from ``GDAT_*`` variables, see
:mod:`gdat.options`).  ``gdat-run`` substitutes it for stock DDP in an unmodified
script.  Construction (:mod:`gdat.tune.construction`) decides the arguments stock DDP
is built with; this class then builds the mode's controller: the tuning loop
(:class:`gdat.tune.loop.TuningLoop`), the profile job
(:class:`gdat.tune.profile_job.ProfileJob`) or none.  Both need torch's private members,
checked first (:func:`gdat.reducer.torch_internals.internals_available`): where this torch
lacks one, the model runs as stock DDP.  What gdat did with the model (tuned,
applied, profiled, not tuned and why) is said at the end of the process
(:mod:`gdat.report.outcome`).  A synchronised training step starts at
each forward with grad enabled outside ``no_sync()``; at that moment the
controller may act (record, switch plans, decide), always on the same step on
every rank.
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Protocol

import torch

from gdat.core import log
from gdat.core.device import device_type_of
from gdat.decide.record import Decision
from gdat.options import GdatConfig
from gdat.reducer import compression, host_allocator
from gdat.reducer.model_check import check_model_across_ranks
from gdat.reducer.torch_internals import (
    STOCK_DDP,
    detach_comm_hook,
    internals_available,
    lacking,
    missing_internals,
    state_without_hooks,
    watch_runtime_logging,
)
from gdat.report import outcome
from gdat.tune.construction import prepare_construction, tuning_name
from gdat.tune.context import TuneContext
from gdat.tune.loop import TuningLoop
from gdat.tune.profile_job import ProfileJob

__all__ = ["DistributedDataParallel", "STOCK_DDP", "MODEL_TRANSFORMS"]

MODEL_TRANSFORMS = "gdat.model_transforms"


class Controller(Protocol):
    done: bool  # finished: tuning decided and checked, the profile written
    watching: bool  # the forward still calls it (measuring on, the drift watch)

    def before_step(self) -> None: ...

    def after_forward(self, output: Any) -> None: ...


def _aoe_bank(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with aoe_full's operator and subgraph bank applied.  aoe_full
    plugs in through the ``gdat.model_transforms`` entry point named ``aoe_bank``
    (gdat does not import it)."""
    found = entry_points(group=MODEL_TRANSFORMS, name="aoe_bank")
    if not found:
        log.warn("--gdat-aoe-bank: aoe_full is not installed; the model is used as built")
        return module
    try:
        return next(iter(found)).load()(module)
    except Exception as e:  # gdat is never the reason a job fails: a plug-in that fails leaves the model as built
        log.warn(f"--gdat-aoe-bank: the bank could not be applied ({type(e).__name__}: {e}); the model is used as "
                 f"built")
        return module


class DistributedDataParallel(STOCK_DDP):
    """Drop-in DDP with online gradient-bucket tuning (see the module docstring)."""

    def __init__(self, module: torch.nn.Module, *args: Any, gdat_config: GdatConfig | None = None,
                 **kwargs: Any) -> None:
        config = gdat_config or GdatConfig.from_env()
        if config.aoe_bank:
            module = _aoe_bank(module)
        mode = config.mode
        if mode in ("tune", "profile") and not internals_available():
            _lacks_internals(module, config, missing_internals())
            mode = "off"
        elif mode == "off" and not config.plan:
            outcome.record(outcome.Outcome("not tuned (--gdat-mode off)", config.work_path))
        if mode != "off":
            check_model_across_ranks(module, args, kwargs)
        if mode == "profile" and not config.plan:  # tune, apply and a plan: prepare_construction
            host_allocator.fix_for(device_type_of(module))
        tune: TuneContext | None = None
        compressed = None
        if mode in ("tune", "apply") or config.plan:
            built = prepare_construction(module, args, kwargs, config)
            kwargs, tune, compressed = built.kwargs, built.tune, built.compressed
        super().__init__(module, *args, **kwargs)
        if compressed is not None:
            compression.install(self, compressed)
        self._gdat_config = config
        self._gdat: Controller | None = None
        if tune is not None or mode == "profile":
            if internals_available(self):
                self._gdat = TuningLoop(self, tune) if tune is not None else ProfileJob(self, config)
            else:
                _lacks_internals(module, config, missing_internals(self))

    @property
    def gdat_done(self) -> bool:
        """Whether gdat has finished with this DDP: tuning decided and confirmed, the
        profile written, or nothing to do (a knowledge-base hit, a plan file, mode off,
        a model gdat does not tune)."""
        return self._gdat is None or self._gdat.done

    @property
    def gdat_decision(self) -> Decision | None:
        """The tuning decision's record (:class:`gdat.decide.record.Decision`) once the
        tuning loop has decided, on every rank (with its steady state once confirmed);
        ``None`` before, and for a DDP gdat does not tune."""
        return self._gdat.decision if isinstance(self._gdat, TuningLoop) else None

    def __getstate__(self) -> dict[str, Any]:
        """Stock DDP's state without gdat's controller and comm hooks: a deep copy or
        an unpickled instance is a stock-behaving DDP (``_gdat`` is ``None``) with the
        user's comm hooks, as stock DDP keeps them; tuning stays with the original."""
        state = state_without_hooks(super().__getstate__(),
                                    lambda hook: getattr(hook, "__module__", "").startswith("gdat."))
        state["_gdat"] = None
        return state

    def register_comm_hook(self, state: object, hook: Any) -> None:
        """Stock DDP's; a comm hook of the user's replaces gdat's compression hook
        (gdat never replaces the user's), with one line saying so, and the
        profile's tracer where the tuner left it on the reducer."""
        if isinstance(self._gdat, TuningLoop):
            self._gdat.release_reducer()
        compressing = compression.installed(self)
        if compressing is not None:
            log.warn("a comm hook was registered: gdat's gradient compression is turned off for it")
            detach_comm_hook(self, compression.compression_hook, compressing)
        super().register_comm_hook(state, hook)

    def _hold_reducer(self) -> None:
        """The user samples DDP's runtime logging: gdat's tuning rebuilds nothing more
        (:func:`gdat.reducer.torch_internals.watch_runtime_logging`)."""
        if isinstance(self._gdat, TuningLoop):
            self._gdat.hold_reducer("DDP's runtime logging is sampled (_set_ddp_runtime_logging_sample_rate), and a "
                                    "plan switch rebuilds the reducer, which restarts it: gdat leaves the reducer as "
                                    "it is")

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        """Stock DDP's forward; at the start of a synchronised step the controller
        acts.  Under ``torch.compile`` Dynamo traces this forward as it traces stock
        DDP's, except the controller's two calls, which run eagerly (they measure,
        communicate and switch plans): each is a graph break."""
        ctl = self._gdat
        if ctl is None or not ctl.watching or not (torch.is_grad_enabled() and self.require_backward_grad_sync):
            return super().forward(*inputs, **kwargs)
        _before_step(ctl)
        output = super().forward(*inputs, **kwargs)
        _after_forward(ctl, output)
        return output


watch_runtime_logging(DistributedDataParallel, DistributedDataParallel._hold_reducer)


def _lacks_internals(module: torch.nn.Module, config: GdatConfig, missing: list[str]) -> None:
    outcome.record(outcome.untuned(lacking(missing), tuning_name(module), config.work_path, log.rank() == 0))


@torch.compiler.disable
def _before_step(ctl: Controller) -> None:
    ctl.before_step()


@torch.compiler.disable
def _after_forward(ctl: Controller, output: Any) -> None:
    ctl.after_forward(output)
