"""Settings read from the environment, with AOE's names.

* ``TUNE_BANK_PATH``: knowledge-base root.  Default: ``$XDG_CACHE_HOME/gdat/bank``
  (``~/.cache/gdat/bank`` when ``XDG_CACHE_HOME`` is unset).
* ``REPEAT_TUNE``: ``True`` re-tunes entries already in the bank; ``False`` (default)
  uses them.  Case-insensitive; ``1``/``0`` also accepted.
"""
from __future__ import annotations

import os
from typing import Mapping

from gdat.errors import UsageError

__all__ = ["bank_root", "repeat_tune", "check_writable_dir"]

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}


def bank_root(env: Mapping[str, str] = os.environ) -> str:
    """The knowledge-base root directory (not created here)."""
    path = env.get("TUNE_BANK_PATH")
    if path is not None:
        if not path.strip():
            raise UsageError("TUNE_BANK_PATH is set but empty")
        return os.path.abspath(os.path.expanduser(path))
    cache = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "gdat", "bank")


def repeat_tune(env: Mapping[str, str] = os.environ) -> bool:
    """Whether ``REPEAT_TUNE`` asks to re-tune entries already in the bank."""
    raw = env.get("REPEAT_TUNE", "")
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UsageError(f"REPEAT_TUNE must be True or False, got {raw!r}")


def check_writable_dir(path: str, what: str) -> None:
    """Create ``path`` if needed and check that files can be written in it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{what} {path!r} cannot be created: {e.strerror}") from None
    if not os.path.isdir(path):
        raise UsageError(f"{what} {path!r} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path!r} is not writable")
