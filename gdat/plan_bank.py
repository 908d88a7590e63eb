"""The GDAT knowledge base: tuned bucket plans keyed by what invalidates them.

Key: the parameters' shapes and dtypes in DDP order, world size, ranks per node
and node count, backend, device type, torch version, the compute hardware
(:func:`gdat.device.hardware_fingerprint`), the DDP options that change timing
(``static_graph``, ``gradient_as_bucket_view``) and the link class
``floor(log2(bandwidth in bytes/s))`` from the start-up allreduce benchmark.

Lookup tolerates measurement noise at a class boundary: the classes ``c``, ``c-1``
and ``c+1`` are tried, and an entry counts only if the bandwidth it was tuned at
is within a factor of 1.5 of the one measured now.  Entries live in a
:class:`~gdat.knowledge_base.KnowledgeBase` of kind ``"gdat"`` (atomic, locked,
corrupt entries warned about and ignored).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

from gdat.errors import BankError, PlanError
from gdat.knowledge_base import BankWarning, KnowledgeBase
from gdat.plan import BucketPlan
from gdat.timeline import ParamInfo

__all__ = ["BankedPlan", "bank_key", "lookup", "BANDWIDTH_TOLERANCE"]

BANDWIDTH_TOLERANCE = 1.5


@dataclass(frozen=True)
class BankedPlan:
    """A stored tuning result: the plan and what it measured when tuned."""

    plan: BucketPlan
    baseline_ms: float
    result_ms: float
    bandwidth_bytes_per_s: float
    tuned_unix_s: float

    def to_payload(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "baseline_ms": self.baseline_ms, "result_ms": self.result_ms,
                "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s, "tuned_unix_s": self.tuned_unix_s}

    @classmethod
    def from_payload(cls, payload: dict[str, Any], where: str) -> "BankedPlan":
        try:
            return cls(BucketPlan.from_dict(payload.get("plan"), f"{where}.plan"),
                       float(payload["baseline_ms"]), float(payload["result_ms"]),
                       float(payload["bandwidth_bytes_per_s"]), float(payload.get("tuned_unix_s", time.time())))
        except (KeyError, TypeError, ValueError, PlanError) as e:
            raise BankError(f"{where}: malformed GDAT entry ({e})") from None


def link_class(bandwidth_bytes_per_s: float) -> int:
    return int(math.floor(math.log2(max(bandwidth_bytes_per_s, 1.0))))


def bank_key(
    params: Sequence[ParamInfo], world_size: int, local_world_size: int, nodes: int, backend: str,
    device_type: str, torch_version: str, hardware: dict[str, str], ddp_options: dict[str, bool],
    bandwidth_bytes_per_s: float,
) -> dict[str, Any]:
    """The knowledge-base key (see the module docstring)."""
    return {
        "params": [[list(p.shape), p.dtype] for p in params],
        "world_size": world_size, "local_world_size": local_world_size, "nodes": nodes,
        "backend": backend, "device_type": device_type, "torch": torch_version,
        "hardware": dict(sorted(hardware.items())), "ddp": dict(sorted(ddp_options.items())),
        "link_class": link_class(bandwidth_bytes_per_s),
    }


def lookup(bank: KnowledgeBase, key: dict[str, Any], bandwidth_bytes_per_s: float,
           params: Sequence[ParamInfo]) -> tuple[dict[str, Any], BankedPlan] | None:
    """The stored entry for ``key`` (or a neighbouring link class within the
    bandwidth tolerance) whose plan fits ``params``; ``None`` if there is none.
    Unusable entries are warned about and skipped."""
    order = [p.index for p in params]
    nbytes = [p.nbytes for p in params]
    dtypes = [p.dtype for p in params]
    for delta in (0, -1, 1):
        probe = {**key, "link_class": key["link_class"] + delta}
        payload = bank.get(probe)
        if payload is None:
            continue
        try:
            entry = BankedPlan.from_payload(payload, bank.path_for(probe))
            entry.plan.check_matches(order, nbytes, dtypes)
        except (BankError, PlanError) as e:
            warnings.warn(f"ignoring unusable knowledge-base entry: {e}", BankWarning, stacklevel=2)
            continue
        ratio = entry.bandwidth_bytes_per_s / bandwidth_bytes_per_s
        if 1 / BANDWIDTH_TOLERANCE <= ratio <= BANDWIDTH_TOLERANCE:
            return probe, entry
    return None
