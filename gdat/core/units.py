"""Units of link rates, as ``tc`` writes them.

A rate is a positive number with a unit: ``bit`` suffixes (``bit``, ``kbit``,
``mbit``, ``gbit``, ``tbit``) are bits per second, ``bps`` suffixes (``bps``,
``kbps``, ...) bytes per second; prefixes are SI (powers of 1000).  gdat works in
bytes per second everywhere.
"""
from __future__ import annotations

import re

from gdat.errors import UsageError

__all__ = ["parse_rate", "format_rate"]

_RATE_UNITS = {
    "bit": 1 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8, "tbit": 1e12 / 8,
    "bps": 1.0, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9, "tbps": 1e12,
}


def parse_rate(rate: str) -> float:
    """Bytes per second of a rate such as ``2gbit`` or ``100mbps``; raises
    :class:`UsageError` naming the value when it is not one."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*", rate or "")
    if not m or m.group(2).lower() not in _RATE_UNITS or float(m.group(1)) <= 0:
        raise UsageError(f"invalid rate {rate!r}: expected a positive number with a unit such as 500mbit or 2gbit")
    return float(m.group(1)) * _RATE_UNITS[m.group(2).lower()]


def format_rate(bytes_per_s: float) -> str:
    """``bytes_per_s`` in Gbit/s (or Mbit/s below 1 Gbit/s), e.g. ``2 Gbit/s``."""
    bits = bytes_per_s * 8
    return f"{bits / 1e9:g} Gbit/s" if bits >= 1e9 else f"{bits / 1e6:g} Mbit/s"
