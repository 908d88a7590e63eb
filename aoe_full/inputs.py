"""The ``--input_shape`` option and the sample inputs made from it.

Format (AOE's): ``name:d0,d1,...`` items separated by ``;``, e.g.
``x:8,3,64,64`` or ``x:8,16,64;mask:8,1,16,16``.  Every dimension is a positive
integer.  Sample inputs are float32 tensors drawn from a standard normal
distribution with a fixed seed, so two runs tune on the same data.
"""
from __future__ import annotations

import re

import torch

from gdat.errors import UsageError

__all__ = ["parse_input_shape", "make_inputs"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_input_shape(text: str) -> dict[str, tuple[int, ...]]:
    """Parse ``name:d0,d1;name2:...`` into an ordered ``{name: shape}``."""
    shapes: dict[str, tuple[int, ...]] = {}
    if not text or not text.strip():
        raise UsageError("--input_shape is empty; expected e.g. x:8,3,64,64")
    for item in text.split(";"):
        item = item.strip()
        name, sep, dims = item.partition(":")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise UsageError(f"bad --input_shape item {item!r}; expected name:d0,d1,... "
                             "e.g. x:8,3,64,64")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise UsageError(f"bad --input_shape dimensions {dims!r} for {name!r}; "
                             "expected comma-separated positive integers") from None
        if not shape or any(d <= 0 for d in shape):
            raise UsageError(f"bad --input_shape dimensions {dims!r} for {name!r}; "
                             "every dimension must be a positive integer")
        if name in shapes:
            raise UsageError(f"--input_shape names {name!r} twice")
        shapes[name] = shape
    return shapes


def make_inputs(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Float32 standard-normal sample inputs of the given shapes (fixed seed)."""
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}
