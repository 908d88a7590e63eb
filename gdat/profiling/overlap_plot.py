"""PNG overlap chart: backward compute vs allreduce per rank, step by step.

One row pair per rank: the upper bar shows forward, backward and optimizer spans,
the lower bar each bucket's allreduce; ticks above the backward bar mark each
gradient becoming ready.  The x axis is milliseconds since the step's start.
Needs matplotlib (``pip install gdat[plot]``); :func:`plot_available` says whether
it is there.
"""
from __future__ import annotations

from typing import Sequence

from gdat.core.jsonio import atomic_file
from gdat.core.timeline import StepRecord

__all__ = ["plot_available", "plot_overlap"]


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _draw(ax, rows: Sequence[tuple[str, StepRecord]]) -> None:
    from matplotlib.patches import Patch

    colors = {"forward": "#4c72b0", "backward": "#55a868", "optimizer": "#8172b2", "allreduce": "#c44e52"}
    ticks, labels = [], []
    for k, (label, s) in enumerate(rows):
        y = 3 * k
        spans = [("forward", 0.0, s.forward_end_s), ("backward", s.backward_start_s, s.backward_end_s)]
        if s.optimizer_start_s is not None and s.optimizer_end_s is not None:
            spans.append(("optimizer", s.optimizer_start_s, s.optimizer_end_s))
        for name, a, b in spans:
            ax.broken_barh([(a * 1e3, (b - a) * 1e3)], (y + 1.1, 0.8), color=colors[name])
        for b in s.buckets:
            ax.broken_barh([(b.launch_s * 1e3, (b.end_s - b.launch_s) * 1e3)], (y, 0.8),
                           color=colors["allreduce"], edgecolor="white", linewidth=0.5)
        ax.vlines([t * 1e3 for _, t in s.grad_ready], y + 1.9, y + 2.1, color="#2d6a3e", linewidth=0.5)
        ticks.append(y + 1)
        labels.append(label)
    ax.set_ylim(-0.5, 3 * len(rows) + 0.5)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("ms since step start")
    handles = [Patch(color=c, label=n) for n, c in colors.items()]
    ax.legend(handles=handles, fontsize=7, loc="upper right")


def plot_overlap(panels: Sequence[tuple[str, Sequence[tuple[str, StepRecord]]]], path: str) -> None:
    """Write a PNG with one panel per ``(title, [(row label, step), ...])``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = sum(0.55 * len(rows) + 1.2 for _, rows in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, max(2.5, height)), squeeze=False)
    for ax, (title, rows) in zip(axes[:, 0], panels):
        _draw(ax, rows)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    try:
        with atomic_file(path, "wb") as f:
            fig.savefig(f, dpi=110, format="png")
    finally:
        plt.close(fig)
