"""``--gdat-mode profile``: record a profile of the user's own training steps.

Steps ``0 .. warmup-1`` run untouched (DDP rebuilds its buckets at step 1).  Then
``profile_steps`` compute-only steps (allreduce deferred to the end of backward)
and ``profile_steps`` overlapped steps are recorded; at the next step every rank
gathers the timelines and rank 0 writes the profile, its Chrome trace and chart
in the work path (:mod:`gdat.profiling.outputs`) and a summary on stderr.  A
script that ends before that gets rank 0's recorded steps written (a one-rank
profile, :meth:`ProfileJob.end_early`).  Training
continues unchanged afterwards (the tracing comm hook stays installed, averaging
like stock DDP, recording nothing).
"""
from __future__ import annotations

from typing import Any

import torch

from gdat.core import log
from gdat.options import GdatConfig
from gdat.profiling.allreduce_bench import fit_from_ladder, measure_allreduce
from gdat.profiling.cast_bench import measure_cast
from gdat.profiling.outputs import profile_summary, write_profile_outputs
from gdat.profiling.session import ProfileSession
from gdat.reducer.compression import reduced_allreduce_works
from gdat.reducer.ddp_model import WeakAttribute, process_group_of
from gdat.report import outcome

__all__ = ["ProfileJob"]


class ProfileJob:
    """Drives a :class:`ProfileSession` from gdat's DDP forward."""

    ddp = WeakAttribute()

    def __init__(self, ddp: torch.nn.Module, config: GdatConfig) -> None:
        self.ddp = ddp
        self.config = config
        self.step = 0
        self.session: ProfileSession | None = None
        self.done = False
        log.info(f"profile: measuring allreduce for {config.comm_budget_s:g} s")
        self.cost = fit_from_ladder(measure_allreduce(config.comm_budget_s, process_group_of(ddp)))
        if config.compress:  # the profile then lets gdat simulate compare compressed plans
            why = reduced_allreduce_works(config.compress, process_group_of(ddp))
            if why is None:
                self.cost = self.cost.with_cast(measure_cast(config.compress, 0.5, process_group_of(ddp)))
            else:
                log.warn(f"--gdat-compress {config.compress}: {why}")
        self.written: str | None = None
        outcome.watch(self)

    @property
    def watching(self) -> bool:
        """The forward calls the job until the profile is written."""
        return not self.done

    @property
    def _end_step(self) -> int:
        return self.config.warmup_steps + 2 * self.config.profile_steps

    def end_early(self, write: bool) -> None:
        """The script ended before the profile was complete: say what it lacked and,
        where ``write``, write (rank 0) the steps this rank recorded, if any."""
        log.warn(f"profile incomplete: the script ran {self.step} training steps, the profile needs "
                 f"{self._end_step + 1} (lower --gdat-profile-steps or --gdat-warmup-steps)")
        if self.session is None or not write:
            return
        profile = self.session.partial(self.cost, {"source": "gdat-run --gdat-mode profile",
                                                   "incomplete": f"the script ended after {self.step} steps"})
        self.session = None
        if log.rank() == 0 and any(r.steps for r in profile.ranks):
            paths = write_profile_outputs(profile, self.config.work_path)
            self.written = paths["profile"]
            log.info(f"profile: wrote rank 0's {len(profile.ranks[0].steps)} recorded steps to {self.written}")

    def outcome(self) -> outcome.Outcome:
        what = "profiled" if self.done else f"profile incomplete ({self.step} of {self._end_step + 1} steps)"
        return outcome.Outcome(what, self.config.work_path, self.written)

    def before_step(self) -> None:
        s, w, p = self.step, self.config.warmup_steps, self.config.profile_steps
        self.step += 1
        if s < w:
            return
        if self.session is None:
            self.session = ProfileSession(self.ddp)
        if s < self._end_step:
            kind = "compute" if s < w + p else "overlap"
            log.info(f"profile: step {s - w + 1}/{2 * p} ({kind})")
            self.session.begin_step(kind)
            return
        self.session.recorder.start_step()
        profile = self.session.finish(self.cost, {"source": "gdat-run --gdat-mode profile"})
        self.session = None
        self.done = True
        if log.rank() == 0:
            paths = write_profile_outputs(profile, self.config.work_path)
            self.written = paths["profile"]
            for line in profile_summary(profile):
                log.info(line)
            for what, path in paths.items():
                log.info(f"{what}: {path}")

    def after_forward(self, output: Any) -> None:
        if self.session is not None:
            self.session.end_forward(output)

