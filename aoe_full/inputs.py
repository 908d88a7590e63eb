"""The sample inputs a model is tuned on: ``--input_shape``, ``--input_dtype``,
``--input_range``, and making them.

Formats (AOE's ``name:value`` items separated by ``;``)::

    --input_shape "input_ids:8,128;attention_mask:8,128"
    --input_dtype "input_ids:int64;attention_mask:int64"     (default float32)
    --input_range "input_ids:0,30522;attention_mask:0,2"      (LOW,HIGH: [LOW, HIGH))

Every dimension is a positive integer.  ``--input_dtype`` and ``--input_range``
may name only inputs of ``--input_shape``.  Values, with a fixed seed so two runs
tune on the same data:

* a floating input without a range: standard normal;
* a floating input with a range: uniform on ``[LOW, HIGH)``;
* an integer input: uniform integers in ``[LOW, HIGH)``; the range is required
  (token ids must lie in the vocabulary, say);
* a bool input: ``True``/``False`` with equal probability (no range).

**Size limit.**  The inputs of one run may hold at most :data:`MAX_INPUT_BYTES`
bytes together (computed from the shapes and dtypes before anything is
allocated), and no dimension may exceed ``2**31 - 1``.  Tuning keeps every
activation of one step in memory, so inputs near the limit are already far past
what this tool is for.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from gdat.errors import UsageError

__all__ = ["InputSpec", "parse_inputs", "parse_input_shape", "make_inputs", "DTYPES",
           "MAX_INPUT_BYTES"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: ``--input_dtype`` names (AOE's spelling) and the torch dtypes they mean.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int64": torch.int64, "int32": torch.int32, "int8": torch.int8,
    "uint8": torch.uint8, "bool": torch.bool,
}

#: Largest total size of one run's sample inputs, in bytes (1 GiB).
MAX_INPUT_BYTES = 1 << 30
_MAX_DIM = 2 ** 31 - 1


@dataclass(frozen=True)
class InputSpec:
    """One sample input: ``shape``, ``dtype`` (a :data:`DTYPES` name) and
    value range ``[low, high)`` (``None``: the dtype's default, see the module
    docstring)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float | None = None
    high: float | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.torch_dtype).element_size()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "low": self.low, "high": self.high}

    @staticmethod
    def from_dict(d: Any, where: str = "input") -> "InputSpec":
        """Rebuild and validate (raises :class:`UsageError` on anything malformed)."""
        if not isinstance(d, dict):
            raise UsageError(f"{where}: expected an object")
        name, shape, dtype = d.get("name"), d.get("shape"), d.get("dtype", "float32")
        low, high = d.get("low"), d.get("high")
        if not isinstance(name, str) or not isinstance(shape, list) \
                or not all(type(x) is int for x in shape) or not isinstance(dtype, str) \
                or not all(v is None or (type(v) in (int, float)) for v in (low, high)):
            raise UsageError(f"{where}: malformed input description")
        spec = InputSpec(name, tuple(shape), dtype, low, high)
        _check(spec)
        return spec


def _items(text: str, option: str, example: str) -> list[tuple[str, str]]:
    if not text or not text.strip():
        raise UsageError(f"{option} is empty; expected e.g. {example}")
    out = []
    for item in text.split(";"):
        item = item.strip()
        name, sep, value = item.partition(":")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise UsageError(f"bad {option} item {item!r}; expected name:value, e.g. {example}")
        if name in {n for n, _ in out}:
            raise UsageError(f"{option} names {name!r} twice")
        out.append((name, value.strip()))
    return out


def parse_input_shape(text: str) -> dict[str, tuple[int, ...]]:
    """Parse ``name:d0,d1;name2:...`` into an ordered ``{name: shape}``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, dims in _items(text, "--input_shape", "x:8,3,64,64"):
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise UsageError(f"bad --input_shape dimensions {dims!r} for {name!r}; "
                             "expected comma-separated positive integers") from None
        if not shape or any(d <= 0 for d in shape):
            raise UsageError(f"bad --input_shape dimensions {dims!r} for {name!r}; "
                             "every dimension must be a positive integer")
        if any(d > _MAX_DIM for d in shape):
            raise UsageError(f"--input_shape {name!r}: dimension larger than {_MAX_DIM}")
        shapes[name] = shape
    return shapes


def _check(spec: InputSpec) -> None:
    if spec.dtype not in DTYPES:
        raise UsageError(f"--input_dtype {spec.name!r}: unknown dtype {spec.dtype!r}; "
                         f"expected one of {', '.join(DTYPES)}")
    if not spec.shape or any(d <= 0 or d > _MAX_DIM for d in spec.shape):
        raise UsageError(f"input {spec.name!r}: every dimension must be in 1..{_MAX_DIM}")
    dt = spec.torch_dtype
    has_range = spec.low is not None or spec.high is not None
    if dt == torch.bool and has_range:
        raise UsageError(f"--input_range {spec.name!r}: a bool input takes no range")
    if not dt.is_floating_point and dt != torch.bool and not has_range:
        raise UsageError(f"input {spec.name!r} is {spec.dtype}: give its values with "
                         f"--input_range {spec.name}:LOW,HIGH")
    if has_range:
        low, high = spec.low, spec.high
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)) \
                or not low < high:
            raise UsageError(f"--input_range {spec.name!r}: expected LOW,HIGH with LOW < HIGH")
        if not dt.is_floating_point:
            info = torch.iinfo(dt)
            if low != int(low) or high != int(high) or low < info.min or high - 1 > info.max:
                raise UsageError(f"--input_range {spec.name!r}: expected integers within "
                                 f"{spec.dtype}'s range [{info.min}, {info.max + 1})")


def parse_inputs(shape_text: str, dtype_text: str | None = None,
                 range_text: str | None = None) -> list[InputSpec]:
    """Validate the three options together (module docstring) into input specs,
    without allocating anything."""
    shapes = parse_input_shape(shape_text)
    dtypes = dict(_items(dtype_text, "--input_dtype", "input_ids:int64")) if dtype_text else {}
    ranges: dict[str, tuple[float, float]] = {}
    for name, value in (_items(range_text, "--input_range", "input_ids:0,30522")
                        if range_text else []):
        try:
            low_s, high_s = value.split(",")
            ranges[name] = (_number(low_s), _number(high_s))
        except ValueError:
            raise UsageError(f"bad --input_range {value!r} for {name!r}; expected LOW,HIGH") from None
    for option, names in (("--input_dtype", dtypes), ("--input_range", ranges)):
        unknown = sorted(set(names) - set(shapes))
        if unknown:
            raise UsageError(f"{option} names {', '.join(unknown)}, which --input_shape does not")
    specs = []
    for name, shape in shapes.items():
        low, high = ranges.get(name, (None, None))
        spec = InputSpec(name, shape, dtypes.get(name, "float32"), low, high)
        _check(spec)
        specs.append(spec)
    total = sum(s.nbytes for s in specs)
    if total > MAX_INPUT_BYTES:
        raise UsageError(f"the sample inputs would take {total} bytes, more than the "
                         f"{MAX_INPUT_BYTES}-byte limit; tune on a smaller batch or shape")
    return specs


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return int(value) if value == int(value) and abs(value) < 2 ** 63 else value


def make_inputs(specs: list[InputSpec] | dict[str, tuple[int, ...]], seed: int = 0
                ) -> dict[str, torch.Tensor]:
    """The sample inputs (module docstring); a ``{name: shape}`` dict means
    float32 standard normal inputs."""
    if isinstance(specs, dict):
        specs = [InputSpec(n, tuple(s)) for n, s in specs.items()]
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for s in specs:
        dt = s.torch_dtype
        if dt == torch.bool:
            out[s.name] = torch.randint(0, 2, s.shape, generator=gen).bool()
        elif not dt.is_floating_point:
            out[s.name] = torch.randint(int(s.low), int(s.high), s.shape, generator=gen, dtype=dt)
        elif s.low is None:
            out[s.name] = torch.randn(s.shape, generator=gen, dtype=torch.float32).to(dt)
        else:
            u = torch.rand(s.shape, generator=gen, dtype=torch.float64)
            out[s.name] = (s.low + (s.high - s.low) * u).to(dt)
    return out
