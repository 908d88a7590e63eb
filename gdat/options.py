"""gdat's options: the ``--gdat-*`` table, and AOE's settings from the environment.

Options.  One table (:class:`GdatConfig`), read from ``--gdat-*`` flags or
``GDAT_*`` variables.  ``gdat-run`` parses the flags, validates them, and hands
them to the training processes as environment variables;
:meth:`GdatConfig.from_env` reads them back there (and is what
``gdat.DistributedDataParallel`` uses by default).

Settings, with AOE's names:

* ``TUNE_BANK_PATH``: knowledge-base root.  Default: ``$XDG_CACHE_HOME/gdat/bank``
  (``~/.cache/gdat/bank`` when ``XDG_CACHE_HOME`` is unset).
* ``REPEAT_TUNE``: ``True`` re-tunes entries already in the bank; ``False`` (default)
  uses them.  Case-insensitive; ``1``/``0`` also accepted.

:func:`check_usable_dir` checks a directory option before anything is written.
"""
from __future__ import annotations

import argparse
import math
import os
import stat
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from gdat.errors import UsageError

__all__ = ["GdatConfig", "MODES", "COMPRESS_DTYPES", "add_arguments", "config_from_args", "bank_root", "repeat_tune",
           "check_usable_dir", "check_writable_dir"]

MODES = ("tune", "apply", "profile", "off")
COMPRESS_DTYPES = ("bf16", "fp16")


def _integer(name: str, minimum: int) -> Callable[[str], int]:
    kind = "a positive" if minimum == 1 else "a non-negative"

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise UsageError(f"{name} must be {kind} integer, got {raw!r}")
        return value
    return parse


def _positive_seconds(name: str) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise UsageError(f"{name} must be a positive number of seconds, got {raw!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise UsageError(f"{name} must be a positive number of seconds, got {raw!r}")
        return value
    return parse


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise UsageError(f"{name} must be one of {', '.join(choices)}; got {raw!r}")
        return raw
    return parse


def _flag(name: str) -> Callable[[str], bool]:
    def parse(raw: str) -> bool:
        value = raw.strip().lower()
        if value in ("1", "true", "yes"):
            return True
        if value in ("0", "false", "no", ""):
            return False
        raise UsageError(f"{name} must be true or false, got {raw!r}")
    return parse


def _compress(raw: str) -> str:
    value = raw.strip().lower()
    if value in ("", "off"):
        return ""
    if value not in COMPRESS_DTYPES:
        raise UsageError(f"--gdat-compress must be one of {', '.join(COMPRESS_DTYPES)}; got {raw!r}")
    return value


def _text(name: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not raw.strip():
            raise UsageError(f"{name} must not be empty")
        return raw
    return parse


@dataclass(frozen=True)
class GdatConfig:
    """Every gdat option with its default.

    * ``mode``: ``tune`` (profile, search, measure, adopt, save), ``apply`` (use the
      bank's plan, never tune), ``profile`` (write a profile, trace and chart), ``off``.
    * ``work_path``: where reports, profiles, traces and charts go.
    * ``max_tune_steps``: training steps the tuner may use, warm-up included.
    * ``comm_budget_s``: seconds for the allreduce microbenchmark at start-up.
    * ``profile_steps``: steps of each kind (compute-only, overlapped) to record.
    * ``warmup_steps``: steps before any measurement (DDP rebuilds buckets at step 1).
    * ``top_k``: candidate plans measured on real steps.
    * ``launcher``: ``torchrun`` or ``mpi`` (rank and rendezvous from MPI).
    * ``aoe_bank``: apply aoe_full's banks (operators, subgraphs, the whole model's training candidate) to the
      model before DDP wraps it.
    * ``plan``: a plan file (``gdat simulate --save-plan``, or a report's chosen plan) to apply
      instead of tuning.
    * ``compress``: allow lossy candidates that allreduce chosen buckets in ``bf16`` or ``fp16``
      (:mod:`gdat.reducer.compression`); empty: off, gradients stay bitwise those of stock DDP.
    """

    mode: str = "tune"
    work_path: str = "gdat_work"
    max_tune_steps: int = 30
    comm_budget_s: float = 2.0
    profile_steps: int = 3
    warmup_steps: int = 2
    top_k: int = 3
    launcher: str = "torchrun"
    aoe_bank: bool = False
    plan: str = ""
    compress: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "GdatConfig":
        """Read ``GDAT_*`` variables (unset ones keep their defaults)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(_env_name(f.name))
            if raw is not None:
                values[f.name] = _PARSERS[f.name](raw)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """``GDAT_*`` variables that reproduce this configuration."""
        return {_env_name(f.name): str(getattr(self, f.name)) for f in fields(self)}


def _env_name(field: str) -> str:
    return "GDAT_" + field.upper()


def _flag_name(field: str) -> str:
    return "--gdat-" + field.replace("_", "-")


_PARSERS: dict[str, Callable[[str], Any]] = {
    "mode": _choice("--gdat-mode", MODES),
    "work_path": _text("--gdat-work-path"),
    "max_tune_steps": _integer("--gdat-max-tune-steps", 1),
    "comm_budget_s": _positive_seconds("--gdat-comm-budget-s"),
    "profile_steps": _integer("--gdat-profile-steps", 1),
    "warmup_steps": _integer("--gdat-warmup-steps", 0),
    "top_k": _integer("--gdat-top-k", 1),
    "launcher": _choice("--gdat-launcher", ("torchrun", "mpi")),
    "aoe_bank": _flag("--gdat-aoe-bank"),
    "plan": str,
    "compress": _compress,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every ``--gdat-*`` option (as strings; :func:`config_from_args` validates)."""
    doc = {line.split("``")[1]: line.split(":", 1)[1].strip()
           for line in (GdatConfig.__doc__ or "").splitlines() if line.strip().startswith("* ``")}
    for f in fields(GdatConfig):
        if f.name == "aoe_bank":
            parser.add_argument(_flag_name(f.name), dest=f.name, action="store_const", const="true",
                                default=None, help=doc.get(f.name, ""))
            continue
        parser.add_argument(_flag_name(f.name), dest=f.name, default=None, metavar=f.name.upper(),
                            help=f"{doc.get(f.name, '')} (default: {f.default})")


def config_from_args(args: argparse.Namespace) -> GdatConfig:
    """Validate parsed ``--gdat-*`` options into a :class:`GdatConfig`."""
    values = {f.name: _PARSERS[f.name](getattr(args, f.name)) for f in fields(GdatConfig)
              if getattr(args, f.name, None) is not None}
    return GdatConfig(**values)


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
