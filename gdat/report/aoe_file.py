"""AOE-style result files: ``aoe_result_<mode>_<timestamp>_<pid>.json``.

Layout (one JSON object)::

    {"basic": {"tuning_name": ..., "tuning_time(s)": ...},
     "<MODE>": {"model_baseline_performance(ms)": ..., "model_result_performance(ms)": ...,
                "model_performance_improvement": "12.34%", "<mode>_tuning_result": ...,
                "repo_summary": {...}, ...}}

``<timestamp>`` is ``YYYYMMDDHHMMSSmmm`` (local time, milliseconds), as AOE writes
it.  The improvement is ``(baseline - result) / result``: the speed-up in percent,
AOE's convention (a step going from 110 ms to 100 ms is a 10% improvement).
"""
from __future__ import annotations

import datetime
import json
import os
from typing import Any

from gdat.core.jsonio import atomic_write_text

__all__ = ["result_path", "write_result", "improvement_percent"]


def improvement_percent(baseline_ms: float, result_ms: float) -> str:
    """AOE's ``model_performance_improvement``: ``(baseline - result) / result`` in %."""
    if result_ms <= 0:
        return "0.00%"
    return f"{(baseline_ms - result_ms) / result_ms * 100.0:.2f}%"


def result_path(work_path: str, mode: str, now: datetime.datetime | None = None) -> str:
    """Where a result file of ``mode`` (gdat, opat, sgat) goes in ``work_path``."""
    now = now or datetime.datetime.now()
    stamp = now.strftime("%Y%m%d%H%M%S") + f"{now.microsecond // 1000:03d}"
    return os.path.join(work_path, f"aoe_result_{mode.lower()}_{stamp}_{os.getpid()}.json")


def write_result(
    work_path: str, mode: str, tuning_name: str, tuning_time_s: float, section: dict[str, Any],
    path: str | None = None,
) -> str:
    """Write a result file atomically (a new one, or ``path`` again) and return its path."""
    path = path or result_path(work_path, mode)
    doc = {"basic": {"tuning_name": tuning_name, "tuning_time(s)": round(tuning_time_s, 3)},
           mode.upper(): section}
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path
