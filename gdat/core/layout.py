"""The gradient layout: which gradients DDP buckets, in what order, by which rule.

A :class:`ParamInfo` is one trainable parameter as DDP's reducer sees it.  A
:class:`GradientLayout` is all of them as DDP fills its buckets: parameter indices
in fill order, each one's size in bytes and dtype, and the bucket-order rule that
says how DDP turns a list of caps into buckets.  Plans, plan switching, reports and
the knowledge-base lookup all take a layout.

Bucket-order rules (``GradientLayout.bucket_order``):

* ``"ready"`` (:data:`READY_ORDER`): DDP rebuilds its buckets after the first
  iteration in gradient-ready order (rank 0's order, broadcast), what stock DDP does
  unless ``find_unused_parameters=True``; ``order`` is that ready order.  The rule
  (torch 2.13, ``bucket_cap_mb_list``): walking the parameters in order, each dtype
  keeps an open bucket and its own position in the cap list; a parameter joins its
  dtype's open bucket, and the bucket closes as soon as its size is ``>=`` its cap;
  the next bucket of that dtype takes the next cap, the last cap repeating.  Buckets
  are listed in the order they close, then the buckets still open at the end, in
  reverse order of their dtype's first appearance (the iteration order of the C++
  reducer's hash map; checked against
  ``torch.distributed._compute_bucket_assignment_by_size`` in the tests).  A
  parameter is never split.

* ``"fixed"`` (:data:`FIXED_ORDER`): a DDP with ``find_unused_parameters=True``
  (and no ``static_graph``) never rebuilds its buckets; it keeps the ones its
  constructor forms, and ``order`` is reverse registration order (DDP index
  ``n-1`` first).  The constructor walks the parameters in *registration* order
  (``order`` backwards) with the same per-dtype cap rule, then sorts the buckets by
  their smallest DDP index and reverses the list: bucket 0 holds the last
  registered parameters, and the first cap applies to the bucket holding
  parameter 0, the last one reduced.  Each bucket's parameters are listed in
  ``order``.  Checked against ``torch.distributed._compute_bucket_assignment_by_size``
  in the tests.  DDP launches bucket ``k`` once all its parameters are ready and
  bucket ``k-1`` has been launched; a parameter the step did not use is marked
  ready by DDP itself when the first gradient hook of the backward fires.

:func:`model_layout` gives a model's layout before any step ran: DDP index order
for ``"ready"`` (a placeholder until the ready order is known), reverse index
order for ``"fixed"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Sequence

from gdat.core.jsonio import require
from gdat.errors import PlanError, ProfileError

__all__ = ["ParamInfo", "params_of", "GradientLayout", "model_layout", "READY_ORDER", "FIXED_ORDER",
           "BUCKET_ORDERS", "fills_backwards"]

READY_ORDER = "ready"
FIXED_ORDER = "fixed"


@dataclass(frozen=True)
class ParamInfo:
    """One trainable parameter as DDP's reducer sees it.

    ``index`` is its position in DDP's parameter list (``named_parameters()`` order,
    trainable and not ignored); ``nbytes`` = numel x element size.
    """

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "shape": list(self.shape),
                "dtype": self.dtype, "nbytes": self.nbytes}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "ParamInfo":
        if not isinstance(d, dict):
            raise ProfileError(f"{where}: expected an object")
        shape = require(d, "shape", list, ProfileError, where)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise ProfileError(f"{where}: field 'shape' must hold non-negative integers")
        return cls(
            index=require(d, "index", int, ProfileError, where, lambda v: v >= 0),
            name=require(d, "name", str, ProfileError, where),
            shape=tuple(shape),
            dtype=require(d, "dtype", str, ProfileError, where),
            nbytes=require(d, "nbytes", int, ProfileError, where, lambda v: v >= 0),
        )


def params_of(named: Sequence[tuple[str, Any]]) -> tuple[ParamInfo, ...]:
    """:class:`ParamInfo` for DDP's parameter list given as ``(name, tensor)`` pairs."""
    return tuple(
        ParamInfo(index=i, name=n, shape=tuple(p.shape), dtype=str(p.dtype).replace("torch.", ""),
                  nbytes=p.numel() * p.element_size())
        for i, (n, p) in enumerate(named)
    )


def _greedy(positions: Sequence[int], nbytes: Sequence[int], dtypes: Sequence[str],
            caps_bytes: Sequence[int]) -> list[list[int]]:
    """DDP's per-dtype cap rule walking ``positions`` in the given order: closed
    buckets in closing order, then the open ones in reverse order of their dtype's
    first appearance."""
    open_: dict[str, list[int]] = {}
    used: dict[str, int] = {}
    size: dict[str, int] = {}
    closed: list[list[int]] = []
    for pos in positions:
        nb, dt = nbytes[pos], dtypes[pos]
        open_.setdefault(dt, []).append(pos)
        size[dt] = size.get(dt, 0) + nb
        cap = caps_bytes[min(used.get(dt, 0), len(caps_bytes) - 1)]
        if size[dt] >= cap:
            closed.append(open_[dt])
            open_[dt] = []
            size[dt] = 0
            used[dt] = used.get(dt, 0) + 1
    return closed + [b for b in reversed(open_.values()) if b]


def _rebuilt_buckets(nbytes: Sequence[int], dtypes: Sequence[str], caps_bytes: Sequence[int]) -> list[list[int]]:
    """Positions of the buckets DDP rebuilds from gradients ready in this order
    (the ``"ready"`` rule of the module docstring)."""
    return _greedy(range(len(nbytes)), nbytes, dtypes, caps_bytes)


def _initial_buckets(nbytes: Sequence[int], dtypes: Sequence[str], caps_bytes: Sequence[int]) -> list[list[int]]:
    """Positions of the buckets DDP's constructor forms when ``order`` is reverse
    registration order (the ``"fixed"`` rule of the module docstring)."""
    formed = _greedy(range(len(nbytes) - 1, -1, -1), nbytes, dtypes, caps_bytes)
    return [sorted(b) for b in sorted(formed, key=max)]


_RULES: dict[str, Callable[[Sequence[int], Sequence[str], Sequence[int]], list[list[int]]]] = {
    READY_ORDER: _rebuilt_buckets,
    FIXED_ORDER: _initial_buckets,
}
BUCKET_ORDERS = tuple(_RULES)


def fills_backwards(bucket_order: str) -> bool:
    """Whether DDP consumes caps walking the layout's order backwards (``"fixed"``:
    the first cap is that of the last bucket reduced)."""
    return bucket_order == FIXED_ORDER


@dataclass(frozen=True)
class GradientLayout:
    """DDP's gradients in bucket-fill order (see the module docstring).

    ``order[j]`` is the DDP index of the ``j``-th gradient, ``nbytes[j]`` its size
    in bytes and ``dtypes[j]`` its dtype; ``bucket_order`` names the rule by which
    DDP forms buckets from caps.
    """

    order: tuple[int, ...]
    nbytes: tuple[int, ...]
    dtypes: tuple[str, ...]
    bucket_order: str = READY_ORDER

    def __post_init__(self) -> None:
        if not len(self.order) == len(self.nbytes) == len(self.dtypes):
            raise PlanError("gradient layout: order, nbytes and dtypes differ in length")
        if len(set(self.order)) != len(self.order):
            raise PlanError("gradient layout: a parameter appears twice")
        if self.bucket_order not in _RULES:
            raise PlanError(f"gradient layout: unknown bucket order {self.bucket_order!r}")

    @classmethod
    def of(cls, params: Sequence[ParamInfo], order: Sequence[int] | None = None,
           bucket_order: str = READY_ORDER) -> "GradientLayout":
        """The layout of ``params`` in ``order`` (DDP indices; default: DDP index order)."""
        by_index = {p.index: p for p in params}
        order = [p.index for p in params] if order is None else list(order)
        missing = [i for i in order if i not in by_index]
        if missing:
            raise PlanError(f"parameter {missing[0]} is not one the model has")
        return cls(tuple(order), tuple(by_index[i].nbytes for i in order),
                   tuple(by_index[i].dtype for i in order), bucket_order)

    def __len__(self) -> int:
        return len(self.order)

    @property
    def total_bytes(self) -> int:
        return sum(self.nbytes)

    @cached_property
    def size_of(self) -> dict[int, int]:
        """Bytes of each parameter, by DDP index."""
        return dict(zip(self.order, self.nbytes))

    @cached_property
    def dtype_of(self) -> dict[int, str]:
        """Dtype of each parameter, by DDP index."""
        return dict(zip(self.order, self.dtypes))

    def reordered(self, order: Sequence[int]) -> "GradientLayout":
        """The same parameters in another ``order`` (a permutation of this one's)."""
        if sorted(order) != sorted(self.order):
            raise PlanError("a reordered layout must hold exactly the same parameters")
        return GradientLayout(tuple(order), tuple(self.size_of[i] for i in order),
                              tuple(self.dtype_of[i] for i in order), self.bucket_order)

    def ddp_buckets(self, caps_bytes: Sequence[int]) -> list[list[int]]:
        """Positions (into ``order``) of the buckets DDP forms with per-bucket caps
        ``caps_bytes`` (bytes) under this layout's rule."""
        if not caps_bytes:
            raise PlanError("need at least one bucket cap")
        return _RULES[self.bucket_order](self.nbytes, self.dtypes, caps_bytes)


def model_layout(params: Sequence[ParamInfo], bucket_order: str = READY_ORDER) -> GradientLayout:
    """The layout of a model's parameters before any step ran (module docstring)."""
    order = [p.index for p in params]
    return GradientLayout.of(params, order[::-1] if bucket_order == FIXED_ORDER else order, bucket_order)
