"""What construction hands on: the arguments stock DDP is built with, and the facts tuning starts from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gdat.core.cost_model import AllreduceCostModel
from gdat.core.plan import BucketPlan
from gdat.core.profile import Profile
from gdat.decide.sequential import Evidence
from gdat.options import GdatConfig
from gdat.schedule.simulator import Calibration

__all__ = ["TuneContext", "Construction"]


@dataclass(frozen=True)
class TuneContext:
    """Facts fixed at construction that the tuning loop and its report use:
    the allreduce fit of the ladder (``cost``), the bank key to keep the result
    under, the user's own bucket arguments, the plan stored under the key when
    ``REPEAT_TUNE`` re-tunes it, the report's name, the job's topology (as the
    report lists it, :meth:`gdat.profiling.topology.Topology.to_dict`) and the
    reduced dtype lossy candidates may use (``""``: none).

    Where the key's evidence is inconclusive (:class:`gdat.decide.sequential.Evidence`)
    tuning resumes it: ``prior`` is that evidence and ``kept_profile`` the profile its
    candidates came from (no profiling again).  A re-tune after the link changed
    mid-run gives ``calibration``, the model fitted to the kept profile with the new
    link's cost (:func:`gdat.schedule.simulator.recalibrated`)."""

    config: GdatConfig
    cost: AllreduceCostModel
    key: dict[str, Any]
    user_bucket_args: dict[str, Any]
    stored: BucketPlan | None
    tuning_name: str
    topology: dict[str, Any]
    compress: str = ""
    prior: Evidence | None = None
    kept_profile: Profile | None = None
    calibration: Calibration | None = None


@dataclass(frozen=True)
class Construction:
    """The keyword arguments to build stock DDP with, the tuning context when
    the model is to be tuned, and a compressed plan whose hook to install."""

    kwargs: dict[str, Any]
    tune: TuneContext | None = None
    compressed: BucketPlan | None = None
