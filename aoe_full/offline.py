"""The offline model: a self-contained AOTInductor package for scene infer.

``<work>/aoe_workspace/<model>_<timestamp>/tunespace/result/<model>_<timestamp>_tune.pt2``
is written when the delivered configuration is the whole model compiled by
Inductor alone (``compiled``, ``compiled_max_autotune``,
``compiled_aggressive_fusion`` or ``compiled_freezing``, see
:data:`aoe_full.strategies.INDUCTOR_WHOLE`): the model is exported with
``torch.export`` on the sample inputs and compiled ahead of time by
``torch._inductor.aoti_compile_and_package`` with the same Inductor options.
The package holds the compiled code and the weights and needs neither the
source file nor aoe_full to run::

    runner = torch._inductor.aoti_load_package(path)    # or aoe_full.load_tuned(path)
    outputs = runner(x)

Its outputs are the model's output tensors as a flat tuple (the leaves of the
model's output structure, in order), or the tensor itself when there is only
one.  It accepts exactly the sample inputs' shapes and dtypes.  Before it is kept,
it is loaded back and its outputs are checked against the untuned model within
the tolerances of :mod:`aoe_full.measure`.

Other delivered configurations (per-subgraph or per-operator choices, ONNX
Runtime, OpenVINO, the untuned model) are not one Inductor compilation of the
whole model, so no package is written and the report says why.

A ``.pt2`` package contains native code that loading runs: load only packages
you made or trust (see docs/aoe_full.md, "What is safe to load").
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from aoe_full.errors import CandidateError, TunedModelError
from aoe_full.measure import relative_error
from aoe_full.pipeline import TuningRun
from aoe_full.strategies import INDUCTOR_WHOLE

__all__ = ["OfflineResult", "package_strategy", "write_package", "load_package", "OfflineModel"]


@dataclass(frozen=True)
class OfflineResult:
    """What became of the offline package: ``path`` (``None`` when none was
    written), the ``strategy`` it compiles, and ``reason`` when not written."""

    path: str | None
    strategy: str | None = None
    compile_s: float | None = None
    relative_error: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "strategy": self.strategy,
                "compile_time(s)": None if self.compile_s is None else round(self.compile_s, 3),
                "relative_error_in_tolerances": self.relative_error, "reason": self.reason}


def package_strategy(run: TuningRun) -> tuple[str | None, str | None]:
    """``(strategy, None)`` when ``run`` delivered a configuration an AOTInductor
    package expresses, else ``(None, reason)``."""
    if run.scene != "infer":
        return None, "offline packages are for scene infer"
    if run.delivered != "whole model":
        return None, (f"the delivered configuration is {run.delivered!r}, not the whole model "
                      "compiled by Inductor")
    (choice,) = {c.strategy for c in run.choices.subgraphs}
    if choice not in INDUCTOR_WHOLE:
        return None, f"the whole model runs {choice!r}, which AOTInductor does not compile"
    return choice, None


class _Flat(torch.nn.Module):
    """The model with its outputs flattened to a tuple of tensors."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> tuple[Any, ...]:
        leaves, _ = tree_flatten(self.model(*args))
        return tuple(leaves)


def _flat(out: Any) -> tuple[Any, ...]:
    return tuple(out) if isinstance(out, (list, tuple)) else (out,)


def write_package(model: torch.nn.Module, inputs: list[torch.Tensor], strategy: str,
                  path: str) -> OfflineResult:
    """Compile ``model`` (untuned, in eval mode) ahead of time with ``strategy``'s
    Inductor options into the package ``path``, load it back and check it.
    Raises :class:`CandidateError` when export, compilation or the check fails
    (nothing is left at ``path`` then)."""
    options = dict(INDUCTOR_WHOLE[strategy])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.pt2"
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            reference = _Flat(model)(*inputs)
            program = torch.export.export(_Flat(model), tuple(inputs), strict=False)
            torch._inductor.aoti_compile_and_package(program, package_path=tmp,
                                                     inductor_configs=options)
        compile_s = time.perf_counter() - t0
        runner = torch._inductor.aoti_load_package(tmp)
        with torch.no_grad():
            got = _flat(runner(*inputs))
        err = relative_error(reference, got)
        if err > 1.0:
            raise CandidateError(f"the AOTInductor package differs from the model by {err:.3g} "
                                 "x the tolerance")
        os.replace(tmp, path)
    except CandidateError:
        _remove(tmp)
        raise
    except Exception as e:
        _remove(tmp)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise CandidateError(f"AOTInductor packaging failed: {type(e).__name__}: {first}") from None
    return OfflineResult(path, strategy, compile_s, err)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class OfflineModel(torch.nn.Module):
    """A loaded AOTInductor package as a module: ``model(*inputs)`` gives the
    output tensor, or the tuple of output tensors."""

    def __init__(self, runner: Any, path: str) -> None:
        super().__init__()
        self.runner = runner
        self.path = path

    def forward(self, *args: Any) -> Any:
        out = _flat(self.runner(*args))
        return out[0] if len(out) == 1 else out


def load_package(path: str) -> OfflineModel:
    """Load an AOTInductor package (runs the native code inside it: trusted
    files only).  Raises :class:`TunedModelError` when it is not one."""
    if not os.path.isfile(path):
        raise TunedModelError(f"{path}: no such file")
    try:
        runner = torch._inductor.aoti_load_package(path)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise TunedModelError(f"{path}: not an AOTInductor package ({type(e).__name__}: {first})") from None
    return OfflineModel(runner, path)
