"""Settings read from the environment, with AOE's names.

* ``TUNE_BANK_PATH``: knowledge-base root.  Default: ``$XDG_CACHE_HOME/gdat/bank``
  (``~/.cache/gdat/bank`` when ``XDG_CACHE_HOME`` is unset).
* ``REPEAT_TUNE``: ``True`` re-tunes entries already in the bank; ``False`` (default)
  uses them.  Case-insensitive; ``1``/``0`` also accepted.
"""
from __future__ import annotations

import os
import stat
from typing import Mapping

from gdat.errors import UsageError

__all__ = ["bank_root", "repeat_tune", "check_usable_dir", "check_writable_dir"]

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


def _problem(path: str, writable: bool) -> str | None:
    """Why ``path`` cannot serve as a directory gdat reads (and writes, when
    ``writable``), without creating anything; ``None`` when it can.  A missing
    directory is fine when its nearest existing ancestor is a directory gdat may
    create it in."""
    probe = path
    while True:
        try:
            info = os.stat(probe)
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(probe)
            if parent == probe:
                return "cannot be created"
            probe = parent
            continue
        except OSError as e:
            return f"cannot be used ({e.strerror})"
        break
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory" if probe == path else f"cannot be created: {probe!r} is not a directory"
    needs = os.W_OK | os.X_OK if writable or probe != path else os.R_OK | os.X_OK
    if not os.access(probe, needs):
        return ("is not " if probe == path else f"cannot be created: {probe!r} is not ") + \
            ("writable" if needs & os.W_OK else "readable")
    return None


def check_usable_dir(path: str, what: str, writable: bool = True) -> None:
    """Raise :class:`UsageError` unless ``path`` is, or can be made, a directory gdat
    may read (and write, when ``writable``).  Creates nothing, so every option can
    be checked before anything is written."""
    problem = _problem(path, writable)
    if problem is not None:
        raise UsageError(f"{what} {path!r} {problem}")


def check_writable_dir(path: str, what: str) -> None:
    """:func:`check_usable_dir`, then create ``path`` if needed."""
    check_usable_dir(path, what)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{what} {path!r} cannot be created ({e.strerror})") from None
