"""The operator (OPAT) and subgraph (SGAT) knowledge bases.

Both use :class:`gdat.bank.store.KnowledgeBase`, kinds ``"opat"`` and
``"sgat"``.  A key holds everything that changes which implementation is fastest:

* OPAT: the operator's signature (kind, target, module configuration, argument
  shapes/dtypes/strides/``requires_grad``, grad mode, module state);
* SGAT: the subgraph's structural hash and the signature of its inputs;
* both: the scene, the hardware fingerprint (:func:`gdat.core.device.hardware_fingerprint`),
  the torch version and the number of intra-op threads.

A payload stores the verdict: ``strategy`` is the winning strategy, or
``"eager"`` when nothing beat the default (so a later run need not measure it
again), with the medians measured.

Outcomes, counted in AOE's ``repo_summary`` (:class:`gdat.bank.store.RepoSummary`),
follow the rule gdat's plans follow too (:func:`gdat.bank.store.settle`, under
the bank's lock):

* no entry: ``add`` when a candidate beat the default (entry written), else
  ``unsatisfied`` (an ``"eager"`` verdict is written, and is no tuning result);
* an entry, ``REPEAT_TUNE`` off: ``hit`` (nothing measured);
* an entry, ``REPEAT_TUNE`` on: re-measured; ``update`` when the new winner
  differs from the stored strategy and beats it, else ``reserved`` (kept).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from gdat.bank.store import KnowledgeBase, settle
from gdat.core.device import hardware_fingerprint

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
    def replaces(stored: dict[str, Any]) -> bool:
        strategy = str(stored.get("strategy", EAGER))
        return winner != strategy and beats_stored(strategy)

    settled = settle(kb, key, payload, winner != EAGER, replaces)
    kept = winner if settled.written else str(settled.found.get("strategy", EAGER))
    return Decision(settled.outcome, kept, settled.written)


def scan(root: str, mode: str, context: BankContext) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every usable ``(item, payload)`` of ``mode`` stored under ``root`` for this
    run's context (scene, hardware, torch version, threads) whose strategy is not
    the default."""
    found = []
    for key, payload in KnowledgeBase(root, mode).entries():
        if key == context.key(mode, key.get("item")) and payload.get("strategy", EAGER) != EAGER:
            found.append((key["item"], payload))
    return found
