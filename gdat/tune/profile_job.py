"""``--gdat-mode profile``: record a profile of the user's own training steps.

Steps ``0 .. warmup-1`` run untouched (DDP rebuilds its buckets at step 1).  Then
``profile_steps`` compute-only steps (allreduce deferred to the end of backward)
and ``profile_steps`` overlapped steps are recorded; at the next step every rank
gathers the timelines and rank 0 writes, in the work path::

    gdat_profile_<stamp>.json   the Profile (schema gdat.profile)
    gdat_trace_<stamp>.json     Chrome trace (Perfetto, chrome://tracing)
    gdat_overlap_<stamp>.png    compute vs allreduce chart (needs matplotlib)

and a summary on stderr.  A script that ends before that gets rank 0's recorded
steps written (a one-rank profile, :meth:`ProfileJob.end_early`).  Training
continues unchanged afterwards (the tracing comm hook stays installed, averaging
like stock DDP, recording nothing).
"""
from __future__ import annotations

import datetime
import os
import statistics
from typing import Any

import torch

from gdat.core import log
from gdat.report import outcome
from gdat.options import GdatConfig
from gdat.reducer.ddp_model import WeakAttribute, process_group_of
from gdat.reducer.compression import reduced_allreduce_works
from gdat.profiling.allreduce_bench import fit_from_ladder, measure_allreduce
from gdat.profiling.cast_bench import measure_cast
from gdat.profiling.chrome_trace import write_chrome_trace
from gdat.profiling.overlap_plot import plot_available, plot_overlap
from gdat.profiling.session import ProfileSession
from gdat.core.profile import Profile

__all__ = ["ProfileJob", "write_profile_outputs", "profile_summary"]


def profile_summary(profile: Profile) -> list[str]:
    """Short human-readable lines about a profile."""
    ready = profile.ready_timeline("compute")
    lines = [f"{len(profile.params)} gradients, {ready.layout.total_bytes / 2**20:.1f} MiB, "
             f"{profile.world_size} ranks ({profile.backend})",
             f"backward compute {(ready.backward_end_s - ready.backward_start_s) * 1e3:.1f} ms, "
             f"rest of step {ready.post_s * 1e3:.1f} ms"]
    overlap = [s for r in profile.ranks for s in r.steps if s.kind == "overlap" and s.buckets]
    if overlap:
        exposed = statistics.median(max(0.0, s.comm_end_s - s.backward_end_s) for s in overlap)
        lines.append(f"exposed allreduce after backward (median, overlapped steps): {exposed * 1e3:.1f} ms")
    if profile.cost_model is not None:
        c = profile.cost_model
        bw = 1.0 / c.beta_s_per_byte / 1e9 if c.beta_s_per_byte > 0 else float("inf")
        lines.append(f"allreduce t = {c.alpha_s * 1e6:.0f} us + n / {bw:.3f} GB/s "
                     f"(fit max error {c.max_rel_err * 100:.0f}% over {c.n_samples} sizes)")
    return lines


def write_profile_outputs(profile: Profile, work_path: str) -> dict[str, str]:
    """Write the profile, its trace and (if matplotlib is there) its chart."""
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    os.makedirs(work_path, exist_ok=True)
    paths = {"profile": os.path.join(work_path, f"gdat_profile_{stamp}.json"),
             "trace": os.path.join(work_path, f"gdat_trace_{stamp}.json")}
    profile.save(paths["profile"])
    write_chrome_trace(profile, paths["trace"])
    if plot_available():
        paths["chart"] = os.path.join(work_path, f"gdat_overlap_{stamp}.png")
        panels = []
        for kind in ("compute", "overlap"):
            rows = [(f"rank {r.rank} step {s.step}", s) for r in profile.ranks for s in r.steps if s.kind == kind]
            if rows:
                panels.append((f"{kind} steps" + (" (allreduce deferred to end of backward)" if kind == "compute"
                                                  else " (stock DDP overlap)"), rows))
        plot_overlap(panels, paths["chart"])
    return paths


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

