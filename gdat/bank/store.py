"""A knowledge base: tuning results keyed by everything that invalidates them.

Layout: ``<root>/<kind>/<id>.json``, one entry a file, ``id`` being the first 32
hex digits of the SHA-256 of the key's canonical JSON.  An entry stores its full
key, so a hash collision or a hand-edited file is detected and ignored.

Concurrency: readers never lock (writes are atomic renames, see
:mod:`gdat.core.jsonio`); writers hold an exclusive ``flock`` on ``<root>/<kind>/.lock``
across read-compare-write, so two jobs updating the same bank both finish and the
bank stays valid.

Robustness: an entry that cannot be read or parsed, or that is of another schema
version, is reported with a warning and treated as absent, never as an error.

Outcome (:func:`settle`, AOE's rule, the same for gdat's plans and aoe_full's
operators and subgraphs).  A tuned item is counted in :class:`RepoSummary` by what
its run found in the bank:

* found usable and not re-tuned: ``hit`` (decided at lookup, nothing written);
* otherwise the run measured; under the bank's lock it reads the entry again (a
  concurrent job may have written it meanwhile) and, with no usable entry, writes
  its result: ``add`` when a candidate beat the default, else ``unsatisfied`` (the
  default is recorded as the verdict); with an entry: ``update`` (written) when a
  candidate won and replaces the stored one by the caller's test (a different
  choice that beat it), else ``reserved`` (the entry is kept).
"""
from __future__ import annotations

import fcntl
import json
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from gdat.core.jsonio import canonical_json, digest, read_document, write_document
from gdat.errors import BankError, GdatWarning

__all__ = ["KnowledgeBase", "RepoSummary", "BankWarning", "Settled", "settle", "key_id"]

BANK_VERSION = 1


class BankWarning(GdatWarning):
    """A knowledge-base entry was unusable and has been ignored."""


@dataclass
class RepoSummary:
    """AOE's ``repo_summary`` counters for one tuning run.

    Every tuned item counts in exactly one field, so
    ``total_num = add + hit + reserved + unsatisfied + update``:

    * ``repo_add_num``: tuned, beat the default, new entry added;
    * ``repo_hit_num``: found in the bank and used without tuning;
    * ``repo_reserved_num``: re-tuned (``REPEAT_TUNE``), not better than the stored
      entry, which is kept;
    * ``repo_unsatisfied_num``: tuned, nothing beat the default; the default is
      recorded as the verdict so that the next run does not tune again;
    * ``repo_update_num``: re-tuned, better than the stored entry, which is replaced.
    """

    repo_add_num: int = 0
    repo_hit_num: int = 0
    repo_reserved_num: int = 0
    repo_unsatisfied_num: int = 0
    repo_update_num: int = 0

    @property
    def total_num(self) -> int:
        return (self.repo_add_num + self.repo_hit_num + self.repo_reserved_num
                + self.repo_unsatisfied_num + self.repo_update_num)

    def count(self, outcome: str) -> None:
        """Count one item with outcome add | hit | reserved | unsatisfied | update."""
        field = f"repo_{outcome}_num"
        if not hasattr(self, field):
            raise ValueError(f"unknown outcome {outcome!r}")
        setattr(self, field, getattr(self, field) + 1)

    def to_dict(self) -> dict[str, int]:
        return {"repo_add_num": self.repo_add_num, "repo_hit_num": self.repo_hit_num,
                "repo_reserved_num": self.repo_reserved_num,
                "repo_unsatisfied_num": self.repo_unsatisfied_num,
                "repo_update_num": self.repo_update_num, "total_num": self.total_num}


def key_id(key: dict[str, Any]) -> str:
    """Stable identifier of a key: SHA-256 of its canonical JSON, 32 hex digits."""
    return digest(key, 32)


class KnowledgeBase:
    """Entries of one ``kind`` (e.g. ``"gdat"``, ``"opat"``) under ``root``."""

    def __init__(self, root: str, kind: str) -> None:
        self.root = root
        self.kind = kind
        self.directory = os.path.join(root, kind)
        self.schema = f"gdat.bank.{kind}"

    def path_for(self, key: dict[str, Any]) -> str:
        return os.path.join(self.directory, key_id(key) + ".json")

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The payload stored under ``key``, or ``None`` (absent or unusable; an
        unusable entry is warned about)."""
        path = self.path_for(key)
        if not os.path.exists(path):
            return None
        try:
            doc = read_document(path, self.schema, BANK_VERSION, BankError)
            if doc.get("key") != json.loads(canonical_json(key)):
                raise BankError(f"{path}: entry key differs from the requested key")
            return _payload(doc, path)
        except BankError as e:
            warnings.warn(f"ignoring unusable knowledge-base entry: {e}", BankWarning, stacklevel=2)
            return None

    def entries(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """``(key, payload)`` of every usable entry (unusable ones are warned about)."""
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(self.directory, name)
            try:
                doc = read_document(path, self.schema, BANK_VERSION, BankError)
                key = doc.get("key")
                if not isinstance(key, dict) or key_id(key) + ".json" != name:
                    raise BankError(f"{path}: entry key does not match its file name")
                payload = _payload(doc, path)
            except BankError as e:
                warnings.warn(f"ignoring unusable knowledge-base entry: {e}", BankWarning, stacklevel=2)
                continue
            yield key, payload

    @contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.directory, exist_ok=True)
        with open(os.path.join(self.directory, ".lock"), "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def update(
        self, key: dict[str, Any], decide: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> bool:
        """Under the bank's lock, call ``decide(current_payload_or_None)``; store its
        result if it is not ``None``.  Returns whether an entry was written."""
        with self._locked():
            new = decide(self.get(key))
            if new is None:
                return False
            write_document(self.path_for(key), self.schema, BANK_VERSION,
                           {"key": key, "updated_unix_s": time.time(), "payload": new})
            return True

    def put(self, key: dict[str, Any], payload: dict[str, Any]) -> None:
        """Store ``payload`` under ``key`` unconditionally (to seed a bank; tuning
        results go through :func:`settle`)."""
        self.update(key, lambda _old: payload)


def _payload(doc: dict[str, Any], path: str) -> dict[str, Any]:
    payload = doc.get("payload")
    if not isinstance(payload, dict):
        raise BankError(f"{path}: entry has no payload object")
    return payload


@dataclass(frozen=True)
class Settled:
    """What :func:`settle` decided for one item: the ``outcome`` (add, reserved,
    unsatisfied, update), the usable entry ``found`` under the lock (``None`` when
    there was none) and whether the bank was ``written``."""

    outcome: str
    found: dict[str, Any] | None
    written: bool


def settle(bank: KnowledgeBase, key: dict[str, Any], payload: dict[str, Any], won: bool,
           replaces: Callable[[dict[str, Any]], bool],
           usable: Callable[[dict[str, Any]], bool] = lambda _payload: True) -> Settled:
    """Record a measured result for ``key`` by the module docstring's rule, under
    the bank's lock.  ``payload``: this run's verdict (its winner, or the default
    when ``won`` is false); ``usable(entry)``: whether a stored payload counts (an
    unusable one is treated as absent and overwritten); ``replaces(entry)``: whether
    this run's winner differs from the stored choice and beat it."""
    result: list[Settled] = []

    def choose(current: dict[str, Any] | None) -> dict[str, Any] | None:
        found = current if current is not None and usable(current) else None
        if found is None:
            result.append(Settled("add" if won else "unsatisfied", None, True))
            return payload
        if won and replaces(found):
            result.append(Settled("update", found, True))
            return payload
        result.append(Settled("reserved", found, False))
        return None

    bank.update(key, choose)
    return result[0]
