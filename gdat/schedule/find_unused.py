"""What ``find_unused_parameters=True`` costs a step, from the tuning profile.

A DDP built with ``find_unused_parameters=True`` does two things per synchronised
step that one without it does not:

* after the forward, DDP's post-forward walks the autograd graph from the outputs
  to find the parameters the step did not use (``prepare_for_backward``);
* at the end of backward it allreduces the used-parameter map, one ``int32`` per
  parameter (``4 n`` bytes), so that every rank agrees on what was used.

Per step, ``search_s`` is the post-forward measured in the profile: the median over
a rank's recorded steps of ``forward_end_s - module_forward_end_s`` (the wrapped
module's forward end to DDP's forward return, :mod:`gdat.profiling.recorder`), the
maximum over ranks.  ``used_map_s = t(4 n)`` is that allreduce under the fitted
allreduce cost model (the link's time for it; backward may hide part of it).  The
cost per step is their sum, in seconds.

:func:`find_unused_cost` answers only when the profile saw no step that left a
parameter without a gradient: then the option bought nothing during tuning, and
the user may want to know its price.  gdat never changes the option.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from gdat.core.cost_model import AllreduceCostModel
from gdat.core.layout import FIXED_ORDER
from gdat.core.profile import Profile

__all__ = ["FindUnusedCost", "find_unused_cost"]

USED_MAP_BYTES_PER_PARAM = 4


@dataclass(frozen=True)
class FindUnusedCost:
    """The measured graph search and the predicted used-map allreduce, seconds per
    step, and how many steps (all ranks) the search was measured on."""

    search_s: float
    used_map_s: float
    steps: int

    @property
    def per_step_s(self) -> float:
        return self.search_s + self.used_map_s

    def describe(self) -> str:
        """The one line gdat prints (stderr) and the report keeps."""
        return (f"find_unused_parameters=True found no unused parameter in the {self.steps} profiled steps; "
                f"it costs about {self.per_step_s * 1e3:.2f} ms per step (graph search "
                f"{self.search_s * 1e3:.2f} ms measured, used-map allreduce {self.used_map_s * 1e3:.2f} ms "
                f"predicted); if no step leaves a parameter unused, find_unused_parameters=False saves it "
                f"(gdat keeps your setting)")

    def to_dict(self) -> dict[str, Any]:
        return {"per_step_ms": round(self.per_step_s * 1e3, 3), "graph_search_ms": round(self.search_s * 1e3, 3),
                "used_map_allreduce_ms": round(self.used_map_s * 1e3, 3), "profiled_steps": self.steps,
                "unused_parameters_seen": False}


def find_unused_cost(profile: Profile, cost: AllreduceCostModel) -> FindUnusedCost | None:
    """The per-step cost of ``find_unused_parameters=True`` (module docstring), or
    ``None`` when the profile is not of such a DDP, saw an unused parameter, or
    holds no step with both forward marks."""
    if profile.bucket_order != FIXED_ORDER or profile.steps_with_unused():
        return None
    per_rank = [[s.forward_end_s - s.module_forward_end_s for s in r.steps if s.module_forward_end_s is not None]
                for r in profile.ranks]
    if not all(per_rank):
        return None
    search = max(0.0, max(statistics.median(v) for v in per_rank))
    used_map = cost.time_s(USED_MAP_BYTES_PER_PARAM * len(profile.params))
    return FindUnusedCost(search, used_map, sum(len(v) for v in per_rank))
