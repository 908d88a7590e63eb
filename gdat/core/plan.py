"""Bucket plans: which gradients DDP reduces together, and how to tell DDP.

A :class:`BucketPlan` is an ordered list of buckets over DDP's parameters in
bucket-fill order.  Bucket ``k`` is launched once all its gradients are ready and
bucket ``k-1`` has been launched.  Each bucket holds one dtype, as DDP splits
buckets per (dtype, device).

A bucket may be marked ``compress`` (``bf16`` or ``fp16``, float32 buckets only):
gdat then allreduces it in that dtype (:mod:`gdat.reducer.compression`, opt-in with
``--gdat-compress``).  Plans without the mark, and plan files written before it
existed, are exact.

Plans are made against a :class:`~gdat.core.layout.GradientLayout` (the gradients in
fill order, their sizes and dtypes, and DDP's bucket-order rule).  A plan is
expressed exactly by per-bucket caps, ``cap_k = bytes of bucket k`` for each dtype
stream, which :meth:`BucketPlan.ddp_caps_mb` returns after checking with the
layout's rule that DDP would form exactly the plan's buckets.  A plan from outside
(a file, the knowledge base) is checked against the model once, by
:meth:`BucketPlan.layout_on`, which also gives the layout in the plan's order.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

from gdat.core.jsonio import check_document, read_document, require, write_document
from gdat.core.layout import GradientLayout, fills_backwards
from gdat.errors import PlanError, PlanNotExpressible
from gdat.options import COMPRESS_DTYPES

__all__ = ["Bucket", "BucketPlan", "plan_from_caps", "MIB", "PLAN_SCHEMA", "PLAN_VERSION"]

MIB = 1 << 20
PLAN_SCHEMA = "gdat.plan"
PLAN_VERSION = 1


@dataclass(frozen=True)
class Bucket:
    """Parameters (DDP indices, in ready order) reduced by one allreduce, and the
    reduced dtype it is allreduced in (``""``: exact)."""

    params: tuple[int, ...]
    nbytes: int
    dtype: str
    compress: str = ""


@dataclass(frozen=True)
class BucketPlan:
    """An ordered partition of DDP's parameters into buckets."""

    buckets: tuple[Bucket, ...]
    label: str = ""

    def __post_init__(self) -> None:
        if not self.buckets:
            raise PlanError("a plan needs at least one bucket")
        seen: set[int] = set()
        for k, b in enumerate(self.buckets):
            if not b.params:
                raise PlanError(f"bucket {k} is empty")
            if b.nbytes < 0:
                raise PlanError(f"bucket {k} has negative size")
            dup = seen.intersection(b.params)
            if dup or len(set(b.params)) != len(b.params):
                raise PlanError(f"parameter {min(dup) if dup else b.params[0]} is in more than one bucket")
            seen.update(b.params)
            if b.compress and (b.compress not in COMPRESS_DTYPES or b.dtype != "float32"):
                raise PlanError(f"bucket {k}: only float32 buckets can be compressed, to "
                                f"{' or '.join(COMPRESS_DTYPES)} (got {b.compress!r} on {b.dtype})")

    @property
    def param_order(self) -> tuple[int, ...]:
        """All parameter indices in the plan's ready order."""
        return tuple(i for b in self.buckets for i in b.params)

    @property
    def bucket_bytes(self) -> tuple[int, ...]:
        return tuple(b.nbytes for b in self.buckets)

    @property
    def compressed(self) -> bool:
        """Whether any bucket is allreduced in a reduced dtype."""
        return any(b.compress for b in self.buckets)

    def same_buckets(self, other: "BucketPlan") -> bool:
        """True when both plans group the same parameters in the same order and
        compress the same buckets the same way."""
        return [(b.params, b.compress) for b in self.buckets] == [(b.params, b.compress) for b in other.buckets]

    def with_compression(self, buckets: Sequence[int], dtype: str, label: str) -> "BucketPlan":
        """This plan with the buckets at positions ``buckets`` compressed to ``dtype``
        (and no other)."""
        chosen = set(buckets)
        return BucketPlan(tuple(Bucket(b.params, b.nbytes, b.dtype, dtype if k in chosen else "")
                                for k, b in enumerate(self.buckets)), label)

    def same_partition(self, other: "BucketPlan") -> bool:
        """True when both plans split the parameters into the same groups (whatever
        the order of the groups or of the parameters inside them): DDP forms the
        same buckets for both, so measuring both measures one plan twice."""
        return {frozenset(b.params) for b in self.buckets} == {frozenset(b.params) for b in other.buckets}

    @classmethod
    def from_ends(cls, layout: GradientLayout, ends: Sequence[int], label: str = "") -> "BucketPlan":
        """A plan cutting ``layout`` at bucket end positions (exclusive ends,
        increasing, the last equal to ``len(layout)``).  A bucket mixing dtypes is
        rejected: boundaries fall where the dtype changes only if ``ends`` say so."""
        order, nbytes, dtypes = layout.order, layout.nbytes, layout.dtypes
        if not ends or ends[-1] != len(order) or any(b <= a for a, b in zip([0, *ends], ends)):
            raise PlanError("bucket ends must increase strictly and end at the last parameter")
        buckets, start = [], 0
        for end in ends:
            kinds = set(dtypes[start:end])
            if len(kinds) != 1:
                raise PlanError(f"bucket {len(buckets)} mixes dtypes {sorted(kinds)}")
            buckets.append(Bucket(tuple(order[start:end]), int(sum(nbytes[start:end])), dtypes[start]))
            start = end
        return cls(tuple(buckets), label)

    def check_matches(self, layout: GradientLayout) -> None:
        """Raise :class:`PlanError` unless the plan covers exactly the parameters of
        ``layout`` (in any order), with matching bucket sizes and dtypes."""
        size, kind = layout.size_of, layout.dtype_of
        for k, b in enumerate(self.buckets):
            for p in b.params:
                if p not in size:
                    raise PlanError(f"plan bucket {k} names parameter {p}, which the model does not have")
                if kind[p] != b.dtype:
                    raise PlanError(f"plan bucket {k} is {b.dtype} but parameter {p} is {kind[p]}")
            if sum(size[p] for p in b.params) != b.nbytes:
                raise PlanError(f"plan bucket {k} claims {b.nbytes} bytes, the model's parameters hold "
                                f"{sum(size[p] for p in b.params)}")
        missing = set(layout.order) - set(self.param_order)
        if missing:
            raise PlanError(f"plan does not cover parameter {min(missing)}")

    def layout_on(self, model: GradientLayout) -> GradientLayout:
        """``model``'s gradients in this plan's order, after :meth:`check_matches`:
        the layout DDP fills when its gradients become ready as the plan assumes."""
        self.check_matches(model)
        return model.reordered(self.param_order)

    def ddp_caps_mb(self, layout: GradientLayout) -> list[float]:
        """``bucket_cap_mb_list`` that makes DDP form exactly this plan's buckets from
        the gradients of ``layout``.

        Cap ``k`` must close the ``k``-th bucket of every dtype at its last gradient:
        ``bytes - last_gradient_bytes < cap <= bytes``.  The last bucket of a dtype
        may instead stay open to the end (``cap > bytes``), which moves it behind the
        closed ones; both choices are tried per dtype and the caps are checked with
        the layout's rule.  Under a rule that consumes caps walking the order
        backwards (``"fixed"``, :func:`gdat.core.layout.fills_backwards`) buckets and
        their gradients are taken in that walking order, so cap 0 is the last
        bucket's.  Bucket sizes and dtypes are the layout's (a plan from
        outside is checked against the model by :meth:`layout_on`).  Caps are MiB as
        floats: ``bytes / 2**20`` is exact in binary floating point, so DDP's
        ``int(cap_mb * 2**20)`` recovers the byte count.  Raises
        :class:`PlanNotExpressible` when no cap list works (mixed dtypes whose k-th
        buckets need incompatible caps, a bucket ending in a zero-byte gradient, or
        an order the layout's rule cannot produce).
        """
        size, kind = layout.size_of, layout.dtype_of
        unknown = [p for p in self.param_order if p not in size]
        if unknown:
            raise PlanError(f"plan names parameter {unknown[0]}, which the layout does not have")
        streams: dict[str, list[tuple[int, ...]]] = {}
        backwards = fills_backwards(layout.bucket_order)
        for b in reversed(self.buckets) if backwards else self.buckets:
            streams.setdefault(kind[b.params[0]], []).append(b.params[::-1] if backwards else b.params)
        want = [b.params for b in self.buckets]
        for close_last in itertools.product((True, False), repeat=len(streams)):
            caps = _caps_for(list(streams.values()), close_last, size)
            if caps is not None and [tuple(layout.order[i] for i in g) for g in layout.ddp_buckets(caps)] == want:
                return [c / MIB for c in caps]
        raise PlanNotExpressible(f"plan {self.label!r} cannot be expressed with bucket_cap_mb_list")

    def hccl_split_indices(self, n_params: int) -> list[int]:
        """AOE/HCCL ``set_split_strategy_by_idx`` list: the largest gradient index of
        each segment, ascending, the last being ``n_params - 1``.  Gradient indices
        count parameters in definition order (DDP index order).  Raises
        :class:`PlanNotExpressible` unless every bucket is a contiguous index range."""
        ranges = []
        for k, b in enumerate(self.buckets):
            lo, hi = min(b.params), max(b.params)
            if hi - lo + 1 != len(b.params):
                raise PlanNotExpressible(f"bucket {k} is not a contiguous range of gradient indices")
            ranges.append((lo, hi))
        ranges.sort()
        if ranges[0][0] != 0 or ranges[-1][1] != n_params - 1 or any(
                b[0] != a[1] + 1 for a, b in zip(ranges, ranges[1:])):
            raise PlanNotExpressible("plan does not cover gradient indices 0..n-1 contiguously")
        return [hi for _, hi in ranges]

    def mindspore_fusion_config(self, n_params: int) -> list[int]:
        """MindSpore ``all_reduce_fusion_config``: the gradient index at which each
        segment after the first starts (segments ``[0, c0), [c0, c1), ... [c_last, n)``)."""
        return [hi + 1 for hi in self.hccl_split_indices(n_params)[:-1]]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label,
                "buckets": [{"params": list(b.params), "nbytes": b.nbytes, "dtype": b.dtype,
                             **({"compress": b.compress} if b.compress else {})} for b in self.buckets]}

    @classmethod
    def from_dict(cls, d: Any, where: str = "plan") -> "BucketPlan":
        if not isinstance(d, dict):
            raise PlanError(f"{where}: expected a JSON object")
        raw = require(d, "buckets", list, PlanError, where)
        buckets = []
        for k, b in enumerate(raw):
            w = f"{where}.buckets[{k}]"
            if not isinstance(b, dict):
                raise PlanError(f"{w}: expected an object")
            params = require(b, "params", list, PlanError, w)
            if not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in params):
                raise PlanError(f"{w}: 'params' must hold non-negative integers")
            compress = b.get("compress", "")
            if not isinstance(compress, str):
                raise PlanError(f"{w}: field 'compress' must be a string")
            buckets.append(Bucket(tuple(params), require(b, "nbytes", int, PlanError, w),
                                  require(b, "dtype", str, PlanError, w), compress))
        label = d.get("label", "")
        if not isinstance(label, str):
            raise PlanError(f"{where}: field 'label' must be a string")
        return cls(tuple(buckets), label)

    def save(self, path: str) -> None:
        """Write the plan as a versioned JSON document (atomically)."""
        write_document(path, PLAN_SCHEMA, PLAN_VERSION, self.to_dict())

    @classmethod
    def load(cls, path: str) -> "BucketPlan":
        """Read a plan written by :meth:`save`; raises :class:`PlanError`."""
        return cls.from_document(read_document(path, PLAN_SCHEMA, PLAN_VERSION, PlanError), path)

    @classmethod
    def from_document(cls, doc: Any, where: str) -> "BucketPlan":
        """A plan from a parsed versioned document."""
        return cls.from_dict(check_document(doc, PLAN_SCHEMA, PLAN_VERSION, PlanError, where), where)


def _caps_for(streams: list[list[tuple[int, ...]]], close_last: Sequence[bool],
              size: dict[int, int]) -> list[int] | None:
    """Byte caps meeting every dtype stream's constraint at each bucket position, or
    None (a stream is its buckets' parameter tuples, in plan order)."""
    caps = []
    for k in range(max(len(s) for s in streams)):
        lo, hi = 0, None
        for stream, close in zip(streams, close_last):
            if k >= len(stream):
                continue
            params = stream[k]
            nbytes = sum(size[p] for p in params)
            if k < len(stream) - 1 or close:
                if len(params) > 1:
                    lo = max(lo, nbytes - size[params[-1]] + 1)
                hi = nbytes if hi is None else min(hi, nbytes)
            else:
                lo = max(lo, nbytes + 1)
        if hi is not None and lo > hi:
            return None
        caps.append(lo if hi is None else hi)
    return caps


def plan_from_caps(layout: GradientLayout, caps_bytes: Sequence[int], label: str = "") -> BucketPlan:
    """The plan DDP forms from ``layout`` with per-bucket caps ``caps_bytes`` (bytes)."""
    return BucketPlan(tuple(
        Bucket(tuple(layout.order[i] for i in g), int(sum(layout.nbytes[i] for i in g)), layout.dtypes[g[0]])
        for g in layout.ddp_buckets(caps_bytes)), label)
