"""A knowledge base: tuning results keyed by everything that invalidates them.

Layout: ``<root>/<kind>/<id>.json``, one entry a file, ``id`` being the first 32
hex digits of the SHA-256 of the key's canonical JSON.  An entry stores its full
key, so a hash collision or a hand-edited file is detected and ignored.

Concurrency: readers never lock (writes are atomic renames, see
:mod:`gdat.jsonio`); writers hold an exclusive ``flock`` on ``<root>/<kind>/.lock``
across read-compare-write, so two jobs updating the same bank both finish and the
bank stays valid.

Robustness: an entry that cannot be read or parsed, or that is of another schema
version, is reported with a warning and treated as absent, never as an error.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from gdat.errors import BankError, GdatWarning
from gdat.jsonio import read_document, write_document

__all__ = ["KnowledgeBase", "RepoSummary", "BankWarning"]

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
    canon = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:32]


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
            if doc.get("key") != json.loads(json.dumps(key, default=str)):
                raise BankError(f"{path}: entry key differs from the requested key")
            payload = doc.get("payload")
            if not isinstance(payload, dict):
                raise BankError(f"{path}: entry has no payload object")
            return payload
        except BankError as e:
            warnings.warn(f"ignoring unusable knowledge-base entry: {e}", BankWarning, stacklevel=2)
            return None

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

    def keys(self) -> list[dict[str, Any]]:
        """The keys of every readable entry (unreadable ones are warned about)."""
        if not os.path.isdir(self.directory):
            return []
        out = []
        for name in sorted(os.listdir(self.directory)):
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.directory, name)
            try:
                doc = read_document(path, self.schema, BANK_VERSION, BankError)
            except BankError as e:
                warnings.warn(f"ignoring unusable knowledge-base entry: {e}", BankWarning, stacklevel=2)
                continue
            if isinstance(doc.get("key"), dict):
                out.append(doc["key"])
        return out

    def put(self, key: dict[str, Any], payload: dict[str, Any]) -> None:
        """Store ``payload`` under ``key`` unconditionally."""
        self.update(key, lambda _old: payload)
