"""Inference engines as strategies: ONNX Runtime and OpenVINO.

A user who wants a CPU model faster reaches for these besides ``torch.compile``.
Each is used through its own converter, the way its documentation shows:

* ``onnxrt``: the function is exported with ``torch.export`` (non-strict), turned
  into ONNX by ``torch.onnx.export`` (the dynamo exporter, which needs
  ``onnxscript``) and run by an ``onnxruntime.InferenceSession`` on the CPU
  execution provider;
* ``openvino``: the exported program is converted by ``openvino.convert_model``
  and compiled for the ``CPU`` device with ``INFERENCE_PRECISION_HINT=f32`` (so it
  computes in float32 like the default, rather than in bf16 where the CPU has it).

Both use ``torch.get_num_threads()`` intra-op threads, as the default does.
(torch's own ``onnxrt`` compile backend is gone from torch 2.13, and OpenVINO's
``openvino`` torch.compile backend fails in Dynamo's guard building on torch 2.13,
hence the converters.)

**Model.**  An engine runs a fixed graph with the weights it was built with: the
implementation is built on its first call, from the modules and tensors passed
as the function's first ``skip`` arguments (the weights are constants in the
engine's graph) and from the non-tensor arguments of that call; calls with other
modules (another copy of the model) build their own.  Tensor arguments are
inputs.  Outputs come back as the same structure of tensors (the structure is
taken from one call of the default).  Inference only: engines have no backward.
Weights changed in place after the first call are not seen (load weights
before tuning or loading a tuned model).
"""
from __future__ import annotations

import importlib.util
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["ENGINES", "engine_unavailable_reason", "engine_strategy_wrap"]

#: engine name -> the Python packages it needs.
ENGINES: dict[str, tuple[str, ...]] = {
    "onnxrt": ("onnxruntime", "onnx", "onnxscript"),
    "openvino": ("openvino",),
}


def engine_unavailable_reason(engine: str) -> str | None:
    """Why ``engine`` cannot run here (a package is missing), or ``None``."""
    missing = [p for p in ENGINES[engine] if importlib.util.find_spec(p) is None]
    if missing:
        return f"{', '.join(missing)} not installed (pip install {' '.join(missing)})"
    return None


class _Bound(torch.nn.Module):
    """``fn(*refs, *inputs)`` with the refs and non-tensor arguments fixed,
    taking the tensor arguments and returning the flat tuple of output tensors."""

    def __init__(self, fn: Callable[..., Any], refs: tuple[Any, ...], args: tuple[Any, ...]) -> None:
        super().__init__()
        self.fn = fn
        self.n_refs = len(refs)
        for i, r in enumerate(refs):
            if isinstance(r, torch.nn.Module):
                self.add_module(f"ref{i}", r)
            elif isinstance(r, torch.nn.Parameter):
                self.register_parameter(f"ref{i}", r)
            elif isinstance(r, torch.Tensor):
                self.register_buffer(f"ref{i}", r)
            else:
                raise TypeError(f"cannot hold a {type(r).__name__} as an engine constant")
        self.template = args

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        refs = tuple(getattr(self, f"ref{i}") for i in range(self.n_refs))
        it = iter(tensors)
        args = tuple(next(it) if isinstance(a, torch.Tensor) else a for a in self.template)
        leaves, _ = tree_flatten(self.fn(*refs, *args))
        return tuple(leaves)


def _numpy(t: torch.Tensor) -> Any:
    return t.detach().contiguous().numpy()


def _onnxrt(bound: _Bound, tensors: tuple[torch.Tensor, ...]) -> Callable[..., list[Any]]:
    import onnxruntime as ort
    program = torch.export.export(bound, tensors, strict=False)
    onnx_program = torch.onnx.export(program, tensors, dynamo=True, verbose=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_program.model_proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(tensors):
        raise RuntimeError(f"ONNX graph takes {len(names)} inputs, expected {len(tensors)}")

    def run(*xs: torch.Tensor) -> list[Any]:
        return session.run(None, {n: _numpy(x) for n, x in zip(names, xs)})
    return run


def _openvino(bound: _Bound, tensors: tuple[torch.Tensor, ...]) -> Callable[..., list[Any]]:
    import openvino as ov
    program = torch.export.export(bound, tensors, strict=False)
    model = ov.convert_model(program)
    compiled = ov.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                               "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                               "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()

    def run(*xs: torch.Tensor) -> list[Any]:
        result = request.infer([_numpy(x) for x in xs], share_inputs=True, share_outputs=False)
        return list(result.to_tuple())
    return run


_BUILDERS = {"onnxrt": _onnxrt, "openvino": _openvino}


class _EngineImpl:
    """One engine for one function; built per (refs, non-tensor arguments)."""

    def __init__(self, engine: str, base: Callable[..., Any], skip: int) -> None:
        self.engine, self.base, self.skip = engine, base, skip
        self.built: dict[Any, tuple[Callable[..., list[Any]], Any]] = {}

    def _key(self, args: tuple[Any, ...]) -> Any:
        refs = tuple(id(a) for a in args[:self.skip])
        rest = tuple(repr(a) for a in args[self.skip:] if not isinstance(a, torch.Tensor))
        return refs, rest

    def _build(self, args: tuple[Any, ...]) -> tuple[Callable[..., list[Any]], Any]:
        with torch.no_grad():
            _, spec = tree_flatten(self.base(*args))
        bound = _Bound(self.base, args[:self.skip], args[self.skip:])
        tensors = tuple(a for a in args[self.skip:] if isinstance(a, torch.Tensor))
        return _BUILDERS[self.engine](bound, tensors), spec

    def __call__(self, *args: Any) -> Any:
        key = self._key(args)
        entry = self.built.get(key)
        if entry is None:
            entry = self.built[key] = self._build(args)
        run, spec = entry
        tensors = [a for a in args[self.skip:] if isinstance(a, torch.Tensor)]
        outs = [torch.from_numpy(o) for o in run(*tensors)]
        return tree_unflatten(outs, spec)


def engine_strategy_wrap(engine: str) -> Callable[[Callable[..., Any], int, str], Callable[..., Any]]:
    """The ``Strategy.wrap`` of ``engine``."""
    def wrap(base: Callable[..., Any], skip: int, tag: str) -> Callable[..., Any]:
        return _EngineImpl(engine, base, skip)
    return wrap
