"""Signatures of values and calls: the shape-level facts that key the banks.

A *value signature* is a nested tuple of primitives that tells what of a value
changes an operator's speed: for a tensor its shape, dtype, strides and whether it
requires grad; for a number, string or ``None`` the value itself; for a list or
tuple the signatures of its items.  The same function computes it at tuning time
(from recorded activations) and at run time (from the live arguments), so a
bank entry matches exactly the calls it was measured on.

:func:`to_json` / :func:`from_json` convert a signature to JSON and back
losslessly (tuples become lists), which is how signatures travel in bank keys.
"""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["value_signature", "call_signature", "to_json", "from_json", "describe"]

_TENSOR = "T"
_SEQ = "L"
_DICT = "D"
_OTHER = "R"


def value_signature(value: Any) -> Any:
    """The signature of one argument value (see the module docstring)."""
    if isinstance(value, torch.Tensor):
        return (_TENSOR, tuple(value.shape), str(value.dtype), tuple(value.stride()),
                bool(value.requires_grad))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return (_SEQ, tuple(value_signature(v) for v in value))
    if isinstance(value, dict):
        return (_DICT, tuple((str(k), value_signature(v)) for k, v in sorted(value.items())))
    return (_OTHER, str(value) if isinstance(value, (torch.dtype, torch.device, torch.memory_format))
            else type(value).__qualname__)


def call_signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Signature of a call: grad mode, then the positional and keyword arguments."""
    return (torch.is_grad_enabled(), tuple(value_signature(a) for a in args),
            tuple((k, value_signature(v)) for k, v in sorted(kwargs.items())))


def to_json(sig: Any) -> Any:
    """A JSON-serialisable form of a signature (tuples become lists)."""
    if isinstance(sig, tuple):
        return [to_json(s) for s in sig]
    return sig


def from_json(obj: Any) -> Any:
    """Inverse of :func:`to_json`: lists become tuples, recursively."""
    if isinstance(obj, list):
        return tuple(from_json(o) for o in obj)
    return obj


def describe(sig: Any) -> str:
    """A short human-readable rendering of the tensor parts of a call signature,
    e.g. ``f32[8,3,64,64] f32[16,3,3,3]``."""
    parts: list[str] = []

    def walk(s: Any) -> None:
        if isinstance(s, tuple) and s and s[0] == _TENSOR and len(s) == 5:
            dtype = s[2].replace("torch.", "").replace("float", "f").replace("bfloat", "bf")
            parts.append(f"{dtype}[{','.join(str(d) for d in s[1])}]")
        elif isinstance(s, tuple):
            for x in s:
                walk(x)

    walk(sig)
    return " ".join(parts)


def module_state(module: torch.nn.Module) -> tuple[bool, str | None]:
    """What of a module can change between calls and alters its behaviour or
    speed: its training flag and the dtype of its first parameter."""
    for p in module.parameters(recurse=False):
        return (module.training, str(p.dtype))
    return (module.training, None)


def module_config(module: torch.nn.Module) -> dict[str, Any]:
    """The fixed configuration of a module: class, ``extra_repr`` and the shapes
    and dtypes of its own parameters and buffers (never their values)."""
    tensors = [(n, list(t.shape), str(t.dtype))
               for n, t in list(module.named_parameters(recurse=False))
               + list(module.named_buffers(recurse=False))]
    return {"class": f"{type(module).__module__}.{type(module).__qualname__}",
            "repr": module.extra_repr(), "tensors": tensors}
