"""The GDAT knowledge base: tuned bucket plans keyed by what invalidates them.

Key: the parameters' shapes and dtypes in DDP order, world size, ranks per node
and node count, backend, device type, torch version, the compute hardware
(:func:`gdat.core.device.hardware_fingerprint`), the DDP options that change timing
(``static_graph``, ``gradient_as_bucket_view``) and the link class
``floor(log2(bandwidth in bytes/s))`` from the start-up allreduce benchmark.

Lookup tolerates measurement noise at a class boundary: the classes ``c``, ``c-1``
and ``c+1`` are tried, and an entry counts only if its plan fits the model and the
bandwidth it was tuned at is within a factor of 1.5 of the one measured now.  A
near miss (:func:`lookup_near`: an entry of the same key at any link class, whatever
its bandwidth) is not trusted on one microbenchmark either way: the caller
measures the link again, longer, and looks up again (:mod:`gdat.tune.construction`).
Entries live in a :class:`~gdat.bank.store.KnowledgeBase` of kind ``"gdat"``
(atomic, locked, corrupt entries warned about and ignored).

Keeping a tuning result (:func:`keep`) follows AOE's outcome rule
(:func:`gdat.bank.store.settle`), decided under the bank's lock against the
entry stored at that moment, so a plan a concurrent job stored is never replaced
by a worse one.  This run's winner replaces a stored plan when it groups gradients
differently and beat it: beyond the noise (:func:`gdat.decide.verdict.beats`) when this run
measured the stored plan (as a candidate, or as the user's configuration), else
when its measured median step is shorter than the one the stored entry records.
An entry whose evidence is inconclusive (``confident`` false) is not a result to
defend: the run that resumed it pooled its evidence, and replaces it as if the
key had none (add / unsatisfied).

The steady-state confirmation changes an entry this run wrote (:func:`swap`),
under the lock and only where the entry still holds the plan this run wrote (an
entry another job stored meanwhile is left alone): the decision's plan gives way
to what the confirmation settled, with the evidence grown by its window.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

from gdat.bank.store import BankWarning, KnowledgeBase, Settled, settle
from gdat.core.cost_model import MAX_BANDWIDTH_BYTES_PER_S
from gdat.core.layout import GradientLayout, ParamInfo
from gdat.core.plan import BucketPlan
from gdat.core.profile import Profile
from gdat.decide.sequential import Evidence
from gdat.decide.verdict import beats
from gdat.decide.windows import WindowStats
from gdat.errors import BankError, PlanError, ProfileError

__all__ = ["BankedPlan", "BankHit", "bank_key", "link_class", "lookup", "lookup_near", "keep", "swap",
           "BANDWIDTH_TOLERANCE"]

BANDWIDTH_TOLERANCE = 1.5


@dataclass(frozen=True)
class BankedPlan:
    """A stored tuning result: the plan that runs and what it measured when tuned.

    ``confident``: whether the evidence settled the key (an entry written before
    evidence was kept counts as settled); ``evidence``: the paired observations the
    decision rests on (:class:`gdat.decide.sequential.Evidence`); ``profile``: the
    profile the candidates came from, so that a launch resuming inconclusive
    evidence measures without profiling again."""

    plan: BucketPlan
    baseline_ms: float
    result_ms: float
    bandwidth_bytes_per_s: float
    tuned_unix_s: float
    confident: bool = True
    evidence: Evidence | None = None
    profile: Profile | None = None

    def to_payload(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "baseline_ms": self.baseline_ms, "result_ms": self.result_ms,
                "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s, "tuned_unix_s": self.tuned_unix_s,
                "confident": self.confident,
                **({"evidence": self.evidence.to_dict()} if self.evidence is not None else {}),
                **({"profile": self.profile.to_document()} if self.profile is not None else {})}

    @classmethod
    def from_payload(cls, payload: dict[str, Any], where: str) -> "BankedPlan":
        try:
            evidence = payload.get("evidence")
            profile = payload.get("profile")
            return cls(BucketPlan.from_dict(payload.get("plan"), f"{where}.plan"),
                       float(payload["baseline_ms"]), float(payload["result_ms"]),
                       float(payload["bandwidth_bytes_per_s"]), float(payload.get("tuned_unix_s", time.time())),
                       bool(payload.get("confident", True)),
                       None if evidence is None else Evidence.from_dict(evidence),
                       None if profile is None else Profile.from_dict(profile, f"{where}.profile"))
        except (KeyError, TypeError, ValueError, AttributeError, PlanError, ProfileError) as e:
            raise BankError(f"{where}: malformed GDAT entry ({e})") from None


_MAX_LINK_CLASS = int(math.log2(MAX_BANDWIDTH_BYTES_PER_S))


def link_class(bandwidth_bytes_per_s: float) -> int:
    """``floor(log2(bandwidth))`` in bytes/s, clamped to 0..48 (1 B/s .. 256 TiB/s,
    :data:`gdat.core.cost_model.MAX_BANDWIDTH_BYTES_PER_S`)."""
    return min(_MAX_LINK_CLASS, int(math.floor(math.log2(max(bandwidth_bytes_per_s, 1.0)))))


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


@dataclass(frozen=True)
class BankHit:
    """A usable entry: the key it is stored under, the entry, and the model's
    gradients in the entry's plan order (the layout to apply the plan with)."""

    key: dict[str, Any]
    entry: BankedPlan
    layout: GradientLayout


def _usable(payload: dict[str, Any], where: str, bandwidth_bytes_per_s: float,
            model: GradientLayout, tolerance: float = BANDWIDTH_TOLERANCE) -> tuple[BankedPlan, GradientLayout] | None:
    """The entry in ``payload`` and the model's layout in its plan's order, if the
    plan fits ``model`` and was tuned within a factor ``tolerance`` of the
    bandwidth; an unusable entry is warned about."""
    try:
        entry = BankedPlan.from_payload(payload, where)
        layout = entry.plan.layout_on(model)
    except (BankError, PlanError) as e:
        warnings.warn(f"ignoring unusable knowledge-base entry: {e}", BankWarning, stacklevel=3)
        return None
    ratio = entry.bandwidth_bytes_per_s / bandwidth_bytes_per_s
    if not 1 / tolerance <= ratio <= tolerance:
        return None
    return entry, layout


def _probe(bank: KnowledgeBase, key: dict[str, Any], bandwidth_bytes_per_s: float, model: GradientLayout,
           deltas: Sequence[int], tolerance: float) -> BankHit | None:
    for delta in deltas:
        probe = {**key, "link_class": key["link_class"] + delta}
        payload = bank.get(probe)
        found = None if payload is None else _usable(payload, bank.path_for(probe), bandwidth_bytes_per_s, model,
                                                     tolerance)
        if found is not None:
            return BankHit(probe, *found)
    return None


def lookup(bank: KnowledgeBase, key: dict[str, Any], bandwidth_bytes_per_s: float,
           model: GradientLayout) -> BankHit | None:
    """The usable entry for ``key``, or for a neighbouring link class (module
    docstring); ``None`` if there is none."""
    return _probe(bank, key, bandwidth_bytes_per_s, model, (0, -1, 1), BANDWIDTH_TOLERANCE)


_LINK_CLASSES = range(_MAX_LINK_CLASS + 1)


def lookup_near(bank: KnowledgeBase, key: dict[str, Any], model: GradientLayout) -> BankHit | None:
    """An entry for ``key`` at any link class whose plan fits ``model``, whatever
    bandwidth it was tuned at (the nearest class first): a microbenchmark cut
    short can be off by orders of magnitude, so distance decides only the order."""
    deltas = sorted((c - key["link_class"] for c in _LINK_CLASSES), key=abs)
    return _probe(bank, key, 1.0, model, deltas, math.inf)


def keep(bank: KnowledgeBase, key: dict[str, Any], entry: BankedPlan, won: bool, model: GradientLayout,
         measured: Sequence[tuple[BucketPlan, WindowStats]], winner: WindowStats | None) -> Settled:
    """Store this run's result under ``key`` by the rule of the module docstring.

    ``entry``: the winner's plan (or, when ``won`` is false, the user's
    configuration as the verdict) with the medians measured; ``measured``: every
    plan this run measured with its window; ``winner``: the winner's window."""
    def usable(payload: dict[str, Any]) -> bool:  # an inconclusive entry is this run's to replace
        found = _usable(payload, bank.path_for(key), entry.bandwidth_bytes_per_s, model)
        return found is not None and found[0].confident

    def replaces(payload: dict[str, Any]) -> bool:
        stored = BankedPlan.from_payload(payload, bank.path_for(key))
        if winner is None or entry.plan.same_partition(stored.plan):
            return False
        ran = next((stats for plan, stats in measured if plan.same_partition(stored.plan)), None)
        if ran is not None:
            return beats(ran, winner)
        return winner.median_s * 1e3 < stored.result_ms

    return settle(bank, key, entry.to_payload(), won, replaces, usable)


def swap(bank: KnowledgeBase, key: dict[str, Any], held: BucketPlan, replacement: BankedPlan) -> bool:
    """Replace the entry under ``key`` by ``replacement`` if it holds ``held`` (the
    plan this run wrote); returns whether it was replaced."""
    def choose(current: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            holds = current is not None and \
                BankedPlan.from_payload(current, bank.path_for(key)).plan.same_partition(held)
        except BankError:
            holds = False
        return replacement.to_payload() if holds else None

    return bank.update(key, choose)
