"""A profile's files and summary: what ``--gdat-mode profile`` and ``gdat show`` write and print.

In the work path (:func:`write_profile_outputs`)::

    gdat_profile_<stamp>.json   the Profile (schema gdat.profile)
    gdat_trace_<stamp>.json     Chrome trace (Perfetto, chrome://tracing)
    gdat_overlap_<stamp>.png    compute vs allreduce chart (needs matplotlib)
"""
from __future__ import annotations

import datetime
import os
import statistics

from gdat.core.profile import Profile
from gdat.profiling.chrome_trace import write_chrome_trace
from gdat.profiling.overlap_plot import plot_available, plot_overlap

__all__ = ["write_profile_outputs", "profile_summary"]


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
        lines.append(f"allreduce t = {c.alpha_s * 1e6:.0f} us + n / {c.bandwidth_bytes_per_s / 1e9:.3f} GB/s "
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
