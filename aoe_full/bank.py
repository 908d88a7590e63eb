"""The operator (OPAT) and subgraph (SGAT) knowledge bases.

Both use :class:`gdat.knowledge_base.KnowledgeBase`, kinds ``"opat"`` and
``"sgat"``.  A key holds everything that changes which implementation is fastest:

* OPAT: the operator's signature (kind, target, module configuration, argument
  shapes/dtypes/strides/``requires_grad``, grad mode, module state);
* SGAT: the subgraph's structural hash and the signature of its inputs;
* both: the scene, the hardware fingerprint (:func:`gdat.device.hardware_fingerprint`),
  the torch version and the number of intra-op threads.

A payload stores the verdict: ``strategy`` is the winning strategy, or
``"eager"`` when nothing beat the default (so a later run need not measure it
again), with the medians measured.

Outcomes, counted in AOE's ``repo_summary`` (:class:`gdat.knowledge_base.RepoSummary`):

* no entry: ``add`` when a candidate beat the default (entry written), else
  ``unsatisfied`` (an ``"eager"`` verdict is written, and is no tuning result);
* an entry, ``REPEAT_TUNE`` off: ``hit`` (nothing measured);
* an entry, ``REPEAT_TUNE`` on: re-measured; ``update`` when the new winner
  differs from the stored strategy and beats it, else ``reserved`` (kept).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from gdat.device import hardware_fingerprint
from gdat.knowledge_base import KnowledgeBase, key_id

__all__ = ["BankContext", "Decision", "decide", "scan", "OPAT", "SGAT"]

OPAT = "opat"
SGAT = "sgat"
EAGER = "eager"


@dataclass(frozen=True)
class BankContext:
    """The parts of every key that come from the run, not the item."""

    scene: str
    device_type: str

    def key(self, mode: str, item: dict[str, Any]) -> dict[str, Any]:
        return {"mode": mode, "item": item, "scene": self.scene,
                "hardware": hardware_fingerprint(self.device_type),
                "torch": torch.__version__, "threads": torch.get_num_threads()}


@dataclass(frozen=True)
class Decision:
    """What tuning one item came to: ``outcome`` (add, hit, reserved, unsatisfied,
    update), the ``strategy`` to use, and whether the bank was written."""

    outcome: str
    strategy: str
    written: bool


def decide(kb: KnowledgeBase, key: dict[str, Any], winner: str, payload: dict[str, Any],
           beats_stored: Callable[[str], bool]) -> Decision:
    """Record a measured result under the bank lock.  ``winner``: the strategy
    that won this run (``"eager"`` if none beat the default); ``beats_stored(s)``:
    whether this run's winner beat strategy ``s`` in this run's measurements."""
    result: dict[str, Decision] = {}

    def choose(current: dict[str, Any] | None) -> dict[str, Any] | None:
        if current is None:
            result["d"] = Decision("add" if winner != EAGER else "unsatisfied", winner, True)
            return payload
        stored = str(current.get("strategy", EAGER))
        if winner != stored and winner != EAGER and beats_stored(stored):
            result["d"] = Decision("update", winner, True)
            return payload
        result["d"] = Decision("reserved", stored, False)
        return None

    kb.update(key, choose)
    return result["d"]


def _entry_keys(kb: KnowledgeBase) -> Iterator[dict[str, Any]]:
    """Keys of the entries stored under ``kb`` (layout of gdat.knowledge_base:
    one ``<id>.json`` a key, holding its ``key``).  Unreadable files are skipped
    here and warned about by ``kb.get``."""
    try:
        names = sorted(os.listdir(kb.directory))
    except OSError:
        return
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(kb.directory, name), encoding="utf-8") as f:
                key = json.load(f).get("key")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(key, dict) and key_id(key) + ".json" == name:
            yield key


def scan(root: str, mode: str, context: BankContext) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every usable ``(item, payload)`` of ``mode`` stored under ``root`` for this
    run's context (scene, hardware, torch version, threads) whose strategy is not
    the default."""
    kb = KnowledgeBase(root, mode)
    found = []
    for key in _entry_keys(kb):
        if key != context.key(mode, key.get("item")):
            continue
        payload = kb.get(key)
        if payload is not None and payload.get("strategy", EAGER) != EAGER:
            found.append((key["item"], payload))
    return found
