"""Cost models: how long an allreduce takes, and how overlap slows both sides.

Allreduce time.  ``t(n) = alpha + beta * n`` for a message of ``n`` bytes, alpha in
seconds (start-up latency), beta in seconds per byte (inverse bandwidth).  When one
line fits the measurements badly (small messages are latency-bound, large ones
bandwidth-bound, and some transports change protocol at a size threshold), the
model is piecewise: segment ``i`` applies from ``min_bytes[i]`` up to the next
segment's start.

The fit to measured allreduce times is :mod:`gdat.profiling.allreduce_fit`'s.

Compression.  A bucket of ``n`` float32 bytes allreduced in a 2-byte dtype
(:mod:`gdat.reducer.compression`) costs ``t(n * COMPRESSED_RATIO) + cast(n)`` seconds of
link work, ``COMPRESSED_RATIO = 1/2``, where ``cast(n) = alpha_s + s_per_byte * n``
(:class:`CastCost`, measured by :mod:`gdat.profiling.cast_bench`) is the time to
cast the bucket down and back up.  The casts are charged to the allreduce, which
waits for the first and is not done before the second.

Contention.  On a shared host, communication and backward compute slow each other.
:class:`Contention` holds the two factors the simulator uses: backward compute is
stretched by ``compute_stretch`` (>= 1) when communication overlaps it, and an
allreduce progresses ``comm_slowdown`` (>= 1) times slower while backward compute
runs.  ``Contention()`` (both 1) is the contention-free model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gdat.core.jsonio import require
from gdat.errors import ProfileError

__all__ = ["CostSegment", "CastCost", "AllreduceCostModel", "Contention", "COMPRESSED_RATIO",
           "MAX_BANDWIDTH_BYTES_PER_S"]

COMPRESSED_RATIO = 0.5
MAX_BANDWIDTH_BYTES_PER_S = 2.0 ** 48  # 256 TiB/s, the bank's highest link class


@dataclass(frozen=True)
class CostSegment:
    """``t = alpha_s + beta_s_per_byte * n`` for ``n >= min_bytes``."""

    min_bytes: int
    alpha_s: float
    beta_s_per_byte: float


@dataclass(frozen=True)
class CastCost:
    """Casting ``n`` float32 bytes to ``dtype`` and back: ``alpha_s + s_per_byte * n`` seconds."""

    dtype: str
    alpha_s: float
    s_per_byte: float

    def time_s(self, nbytes: np.ndarray | float) -> np.ndarray | float:
        return self.alpha_s + self.s_per_byte * nbytes

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "alpha_s": self.alpha_s, "s_per_byte": self.s_per_byte}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "CastCost":
        if not isinstance(d, dict):
            raise ProfileError(f"{where}: expected an object")
        return cls(require(d, "dtype", str, ProfileError, where),
                   float(require(d, "alpha_s", (int, float), ProfileError, where, lambda v: v >= 0)),
                   float(require(d, "s_per_byte", (int, float), ProfileError, where, lambda v: v >= 0)))


@dataclass(frozen=True)
class AllreduceCostModel:
    """Piecewise-linear allreduce time in seconds as a function of message bytes.

    ``rmse_s`` and ``max_rel_err`` describe the fit on its ``n_samples`` samples;
    ``source`` says where the samples came from (microbenchmark, in-situ, ...);
    ``cast``, when measured, the cost of compressing a bucket (module docstring).
    """

    segments: tuple[CostSegment, ...]
    rmse_s: float = 0.0
    max_rel_err: float = 0.0
    n_samples: int = 0
    source: str = "given"
    cast: CastCost | None = None

    def __post_init__(self) -> None:
        if not self.segments or self.segments[0].min_bytes != 0:
            raise ProfileError("cost model: the first segment must start at 0 bytes")
        starts = [s.min_bytes for s in self.segments]
        if starts != sorted(set(starts)):
            raise ProfileError("cost model: segment starts must increase")
        for s in self.segments:
            if not (s.alpha_s >= 0 and s.beta_s_per_byte >= 0
                    and math.isfinite(s.alpha_s) and math.isfinite(s.beta_s_per_byte)):
                raise ProfileError("cost model: alpha and beta must be finite and non-negative")

    @classmethod
    def linear(cls, alpha_s: float, beta_s_per_byte: float, source: str = "given") -> "AllreduceCostModel":
        """A single-line model."""
        return cls((CostSegment(0, alpha_s, beta_s_per_byte),), source=source)

    @property
    def alpha_s(self) -> float:
        """Start-up latency of the smallest messages, seconds."""
        return self.segments[0].alpha_s

    @property
    def beta_s_per_byte(self) -> float:
        """Inverse bandwidth of the largest messages, seconds per byte."""
        return self.segments[-1].beta_s_per_byte

    @property
    def bandwidth_bytes_per_s(self) -> float:
        """The link's bandwidth as this model sees it, ``1 / beta`` bytes per second,
        at most ``MAX_BANDWIDTH_BYTES_PER_S`` (a fit may clamp ``beta`` to 0).  The
        knowledge base keys, looks up and stores a plan by this one quantity."""
        return 1.0 / max(self.beta_s_per_byte, 1.0 / MAX_BANDWIDTH_BYTES_PER_S)

    def time_s(self, nbytes: float) -> float:
        """Predicted allreduce time of one ``nbytes`` message, seconds."""
        seg = self.segments[0]
        for s in self.segments[1:]:
            if nbytes >= s.min_bytes:
                seg = s
        return seg.alpha_s + seg.beta_s_per_byte * nbytes

    def times_s(self, nbytes: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`time_s`."""
        nbytes = np.asarray(nbytes, dtype=np.float64)
        out = self.segments[0].alpha_s + self.segments[0].beta_s_per_byte * nbytes
        for s in self.segments[1:]:
            out = np.where(nbytes >= s.min_bytes, s.alpha_s + s.beta_s_per_byte * nbytes, out)
        return out

    def compressed_times_s(self, nbytes: np.ndarray | float) -> np.ndarray | float:
        """Link work of compressed float32 buckets of ``nbytes`` (module docstring);
        needs :attr:`cast`."""
        if self.cast is None:
            raise ProfileError("cost model: no cast cost measured (tune with --gdat-compress)")
        n = np.asarray(nbytes, dtype=np.float64)
        out = self.times_s(n * COMPRESSED_RATIO) + self.cast.time_s(n)
        return float(out) if np.ndim(nbytes) == 0 else out

    def with_cast(self, cast: CastCost | None) -> "AllreduceCostModel":
        """This model with the cast cost ``cast``."""
        return replace(self, cast=cast)

    def scaled(self, factor: float, source: str) -> "AllreduceCostModel":
        """This model with every allreduce time multiplied by ``factor`` (the cast
        cost, compute, is kept)."""
        return AllreduceCostModel(
            tuple(CostSegment(s.min_bytes, s.alpha_s * factor, s.beta_s_per_byte * factor) for s in self.segments),
            self.rmse_s * factor, self.max_rel_err, self.n_samples, source, self.cast)

    def lower_line(self) -> tuple[float, float]:
        """``(alpha, beta)`` with ``alpha + beta n <= time_s(n)`` for every n >= 0."""
        return (min(s.alpha_s for s in self.segments), min(s.beta_s_per_byte for s in self.segments))

    def to_dict(self) -> dict[str, Any]:
        return {
            "segments": [{"min_bytes": s.min_bytes, "alpha_s": s.alpha_s,
                          "beta_s_per_byte": s.beta_s_per_byte} for s in self.segments],
            "rmse_s": self.rmse_s, "max_rel_err": self.max_rel_err,
            "n_samples": self.n_samples, "source": self.source,
            **({"cast": self.cast.to_dict()} if self.cast is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "AllreduceCostModel":
        if not isinstance(d, dict):
            raise ProfileError(f"{where}: expected an object")
        segs = require(d, "segments", list, ProfileError, where)
        out = []
        for k, s in enumerate(segs):
            w = f"{where}.segments[{k}]"
            if not isinstance(s, dict):
                raise ProfileError(f"{w}: expected an object")
            out.append(CostSegment(
                require(s, "min_bytes", int, ProfileError, w),
                float(require(s, "alpha_s", (int, float), ProfileError, w)),
                float(require(s, "beta_s_per_byte", (int, float), ProfileError, w)),
            ))
        return cls(
            segments=tuple(out),
            rmse_s=float(d.get("rmse_s", 0.0)), max_rel_err=float(d.get("max_rel_err", 0.0)),
            n_samples=int(d.get("n_samples", 0)), source=str(d.get("source", "given")),
            cast=CastCost.from_dict(d["cast"], f"{where}.cast") if d.get("cast") is not None else None,
        )


@dataclass(frozen=True)
class Contention:
    """Mutual slow-down of overlapped backward compute and communication (>= 1 each)."""

    compute_stretch: float = 1.0
    comm_slowdown: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return {"compute_stretch": self.compute_stretch, "comm_slowdown": self.comm_slowdown}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Contention":
        if not isinstance(d, dict):
            raise ProfileError(f"{where}: expected an object")
        return cls(
            float(require(d, "compute_stretch", (int, float), ProfileError, where, lambda v: v >= 1)),
            float(require(d, "comm_slowdown", (int, float), ProfileError, where, lambda v: v >= 1)),
        )
