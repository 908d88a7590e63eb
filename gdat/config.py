"""gdat's options: one table, read from ``--gdat-*`` flags or ``GDAT_*`` variables.

``gdat-run`` parses the flags, validates them, and hands them to the training
processes as environment variables; :meth:`GdatConfig.from_env` reads them back
there (and is what ``gdat.DistributedDataParallel`` uses by default).
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from gdat.errors import UsageError

__all__ = ["GdatConfig", "MODES", "COMPRESS_DTYPES", "add_arguments", "config_from_args"]

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
    * ``aoe_bank``: apply aoe_full's operator/subgraph bank to the model before DDP wraps it.
    * ``plan``: a plan file (``gdat simulate --save-plan``, or a report's chosen plan) to apply
      instead of tuning.
    * ``compress``: allow lossy candidates that allreduce chosen buckets in ``bf16`` or ``fp16``
      (:mod:`gdat.compression`); empty: off, gradients stay bitwise those of stock DDP.
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
