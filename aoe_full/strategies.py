"""Candidate implementations ("strategies") for operators and subgraphs.

A strategy turns the default implementation ``base(*args, **kwargs)`` of an
operator or subgraph into another callable with the same meaning.  The first
``skip`` arguments are not data (the module of a module op; the modules and
parameters a subgraph uses) and are passed through untouched.

Operator strategies (OPAT), by the kinds they apply to:

===================== ============================ ====================================
name                  kinds                        what it does
===================== ============================ ====================================
eager                 all                          the default (the model as written)
threads1              all (when >1 thread)         the forward with one intra-op thread
channels_last         conv, norm (4-D input)       input to channels_last, output back
no_mkldnn             conv, norm                   oneDNN (mkldnn) disabled: native kernels
sdpa_math             attention (functional)       SDPA restricted to the math backend
sdpa_flash            attention (functional)       SDPA restricted to the flash backend
compiled              all                          torch.compile (Inductor, default mode)
compiled_max_autotune conv, linear, matmul, bmm    Inductor max-autotune (GEMM templates)
===================== ============================ ====================================

Subgraph strategies (SGAT), which also apply to the whole model as one subgraph:
``eager``, ``compiled``, ``compiled_max_autotune``, ``compiled_aggressive_fusion``
(Inductor's ``aggressive_fusion``), ``compiled_freezing`` (scene infer: Inductor
with ``freezing``, weights constant-folded and prepacked), ``channels_last`` and
``channels_last_compiled`` (when a subgraph input is 4-D), ``onnxrt`` and
``openvino`` (scene infer, when the package is installed: the engines of
:mod:`aoe_full.engines`), and ``opat`` (the subgraph with the operator bank's
choices for its operators).

A strategy that cannot run here is skipped with the reason in the report:
``compile_unavailable_reason`` for Inductor, a missing package for an engine,
"inference only" for freezing and the engines in scene train.

Every compiled strategy compiles a fresh copy of its function with
``dynamic=False``, so each (strategy, signature) has its own Dynamo cache and
never reaches Dynamo's recompile limit.
"""
from __future__ import annotations

import os
import shutil
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._pytree import tree_map

from aoe_full.engines import engine_strategy_wrap, engine_unavailable_reason

__all__ = ["Strategy", "OP_STRATEGIES", "SUBGRAPH_STRATEGIES", "DEFAULT", "op_strategies",
           "subgraph_strategies", "compile_unavailable_reason", "CompileBudget", "strategy_names",
           "INDUCTOR_WHOLE", "fresh_function"]

DEFAULT = "eager"


def fresh_function(fn: Callable[..., Any], tag: str) -> Callable[..., Any]:
    """A new Python function that calls ``fn``, with its own code object (so
    Dynamo keeps a separate cache for it)."""
    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    name = "aoe_" + "".join(c if c.isalnum() else "_" for c in tag)
    code = call.__code__.replace(co_name=name)
    return types.FunctionType(code, call.__globals__, name, None, call.__closure__)


def _compiled(mode: str | None = None, options: dict[str, Any] | None = None):
    def wrap(base: Callable[..., Any], skip: int, tag: str) -> Callable[..., Any]:
        if options is not None:
            return torch.compile(fresh_function(base, tag), options=options, dynamic=False)
        return torch.compile(fresh_function(base, tag), mode=mode, dynamic=False)
    return wrap


def _eager(base: Callable[..., Any], skip: int, tag: str) -> Callable[..., Any]:
    return base


def _threads1(base: Callable[..., Any], skip: int, tag: str) -> Callable[..., Any]:
    def impl(*args: Any, **kwargs: Any) -> Any:
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return base(*args, **kwargs)
        finally:
            torch.set_num_threads(n)
    return impl


def _is_4d(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point()


def _to_contiguous(x: Any) -> Any:
    return x.contiguous() if _is_4d(x) else x


def _channels_last(base: Callable[..., Any], skip: int, tag: str) -> Callable[..., Any]:
    def impl(*args: Any, **kwargs: Any) -> Any:
        data = tuple(a.contiguous(memory_format=torch.channels_last) if _is_4d(a) else a
                     for a in args[skip:])
        return tree_map(_to_contiguous, base(*args[:skip], *data, **kwargs))
    return impl


def _channels_last_compiled(base: Callable[..., Any], skip: int, tag: str) -> Callable[..., Any]:
    return _channels_last(_compiled()(base, skip, tag), skip, tag)


def _no_mkldnn(base: Callable[..., Any], skip: int, tag: str) -> Callable[..., Any]:
    def impl(*args: Any, **kwargs: Any) -> Any:
        enabled = bool(torch.backends.mkldnn.enabled)
        torch.backends.mkldnn.set_flags(False, None, None, None)
        try:
            return base(*args, **kwargs)
        finally:
            torch.backends.mkldnn.set_flags(enabled, None, None, None)
    return impl


def _sdpa(backend: SDPBackend):
    def wrap(base: Callable[..., Any], skip: int, tag: str) -> Callable[..., Any]:
        def impl(*args: Any, **kwargs: Any) -> Any:
            with sdpa_kernel(backend):
                return base(*args, **kwargs)
        return impl
    return wrap


@dataclass(frozen=True)
class Strategy:
    """A named way to implement an operator or subgraph.

    ``kinds``: operator kinds it applies to (``None``: all); ``needs_4d``: only
    when a data argument is a 4-D float tensor; ``functional_only``: not for
    module ops; ``compiled``: costs a compilation (counted in the budget);
    ``infer_only``: not in scene train; ``unavailable``: why it cannot run on
    this machine (``None``: it can)."""

    name: str
    wrap: Callable[[Callable[..., Any], int, str], Callable[..., Any]]
    kinds: frozenset[str] | None = None
    needs_4d: bool = False
    functional_only: bool = False
    compiled: bool = False
    multi_thread: bool = False
    infer_only: bool = False
    unavailable: Callable[[], str | None] | None = None

    def skip_reason(self, scene: str) -> str | None:
        """Why this strategy is not tried in ``scene`` here (``None``: it is)."""
        if self.infer_only and scene == "train":
            return "inference only (no backward)"
        if self.unavailable is not None:
            return self.unavailable()
        return compile_unavailable_reason() if self.compiled else None

    def applies(self, kind: str, data_args: tuple[Any, ...], module_op: bool) -> bool:
        if self.kinds is not None and kind not in self.kinds:
            return False
        if self.functional_only and module_op:
            return False
        if self.multi_thread and torch.get_num_threads() < 2:
            return False
        return not self.needs_4d or any(_is_4d(a) for a in data_args)

    def build(self, base: Callable[..., Any], skip: int, tag: str) -> Callable[..., Any]:
        return self.wrap(base, skip, f"{self.name}_{tag}")


_GEMM = frozenset({"conv", "linear", "matmul", "bmm"})
OP_STRATEGIES: dict[str, Strategy] = {s.name: s for s in [
    Strategy(DEFAULT, _eager),
    Strategy("threads1", _threads1, multi_thread=True),
    Strategy("channels_last", _channels_last, frozenset({"conv", "norm"}), needs_4d=True),
    Strategy("no_mkldnn", _no_mkldnn, frozenset({"conv", "norm"})),
    Strategy("sdpa_math", _sdpa(SDPBackend.MATH), frozenset({"attention"}), functional_only=True),
    Strategy("sdpa_flash", _sdpa(SDPBackend.FLASH_ATTENTION), frozenset({"attention"}),
             functional_only=True),
    Strategy("compiled", _compiled(), compiled=True),
    Strategy("compiled_max_autotune", _compiled("max-autotune-no-cudagraphs"), _GEMM,
             compiled=True),
]}

SUBGRAPH_STRATEGIES: dict[str, Strategy] = {s.name: s for s in [
    Strategy(DEFAULT, _eager),
    Strategy("compiled", _compiled(), compiled=True),
    Strategy("compiled_max_autotune", _compiled("max-autotune-no-cudagraphs"), compiled=True),
    Strategy("compiled_aggressive_fusion", _compiled(options={"aggressive_fusion": True}),
             compiled=True),
    Strategy("compiled_freezing", _compiled(options={"freezing": True}), compiled=True,
             infer_only=True),
    Strategy("channels_last", _channels_last, needs_4d=True),
    Strategy("channels_last_compiled", _channels_last_compiled, needs_4d=True, compiled=True),
    Strategy("onnxrt", engine_strategy_wrap("onnxrt"), compiled=True, infer_only=True,
             unavailable=lambda: engine_unavailable_reason("onnxrt")),
    Strategy("openvino", engine_strategy_wrap("openvino"), compiled=True, infer_only=True,
             unavailable=lambda: engine_unavailable_reason("openvino")),
    Strategy("opat", _eager),  # the base passed in is the OPAT-rewritten subgraph
]}

#: Subgraph strategies that compile the whole function with Inductor alone, so
#: a whole model tuned with one of them can be written as an AOTInductor
#: package (:mod:`aoe_full.offline`): name -> Inductor options.
INDUCTOR_WHOLE: dict[str, dict[str, Any]] = {
    "compiled": {}, "compiled_max_autotune": {"max_autotune": True},
    "compiled_aggressive_fusion": {"aggressive_fusion": True}, "compiled_freezing": {"freezing": True},
}


def strategy_names() -> list[str]:
    """Every strategy name either tuner knows (for ``--candidates``)."""
    return sorted(set(OP_STRATEGIES) | set(SUBGRAPH_STRATEGIES))


def op_strategies(kind: str, data_args: tuple[Any, ...], module_op: bool,
                  allowed: frozenset[str] | None) -> list[Strategy]:
    """The operator strategies for one operator, default first."""
    return [s for s in OP_STRATEGIES.values()
            if s.applies(kind, data_args, module_op)
            and (s.name == DEFAULT or allowed is None or s.name in allowed)]


def subgraph_strategies(data_args: tuple[Any, ...], has_opat: bool,
                        allowed: frozenset[str] | None) -> list[Strategy]:
    """The subgraph strategies for one subgraph, default first."""
    return [s for s in SUBGRAPH_STRATEGIES.values()
            if s.applies("subgraph", data_args, False)
            and (s.name != "opat" or has_opat)
            and (s.name == DEFAULT or allowed is None or s.name in allowed)]


_COMPILE_REASON: list[str | None] = []


def compile_unavailable_reason() -> str | None:
    """Why compiled candidates cannot run here (``None`` when they can): Dynamo
    unsupported, or no C++ compiler for Inductor's CPU backend."""
    if not _COMPILE_REASON:
        reason = None
        if not torch._dynamo.is_dynamo_supported():
            reason = "torch.compile (Dynamo) is not supported on this Python/platform"
        elif not (os.environ.get("CXX") or any(shutil.which(c) for c in ("g++", "c++", "clang++"))):
            reason = "no C++ compiler found for Inductor (install g++ or set CXX)"
        _COMPILE_REASON.append(reason)
    return _COMPILE_REASON[0]


class CompileBudget:
    """Seconds of compilation a tuning run may spend.  A compiled candidate is
    tried only while the time already spent is below ``limit_s``; one compile
    cannot be interrupted, so the total may overrun by one compilation."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.spent_s = 0.0

    def allows(self) -> bool:
        return self.spent_s < self.limit_s

    def charge(self, seconds: float) -> None:
        self.spent_s += seconds
