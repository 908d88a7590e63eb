"""Fit an allreduce cost model to measured times (:class:`gdat.core.cost_model.AllreduceCostModel`).

:func:`fit_allreduce` solves weighted least squares
``min sum_i ((alpha + beta n_i - t_i) / t_i)^2`` so every sample counts by its
relative error (plain least squares would ignore the small messages that decide
alpha).  A two-segment fit replaces the single line when the line's largest
relative error exceeds ``split_above`` and the best split (at least two sizes on
each side, least squared relative error) halves the squared relative error.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from gdat.core.cost_model import AllreduceCostModel, CostSegment
from gdat.errors import ProfileError

__all__ = ["fit_allreduce"]


_MIN_ALPHA_S = 1e-7


def _wls_line(n: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Weighted least squares of ``t ~ alpha + beta n`` with weights ``1/t``,
    constrained to alpha > 0 and beta >= 0."""
    w = 1.0 / t
    a = np.stack([w, w * n], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(a, w * t, rcond=None)
    if beta < 0:
        beta = 0.0
        alpha = float(np.sum(w * w * t) / np.sum(w * w))
    if alpha < _MIN_ALPHA_S:
        alpha = _MIN_ALPHA_S
        beta = max(0.0, float(np.sum(w * w * n * (t - alpha)) / np.sum(w * w * n * n)))
    return float(alpha), float(beta)


def _errors(model: AllreduceCostModel, n: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    pred = model.times_s(n)
    return float(np.sqrt(np.mean((pred - t) ** 2))), float(np.max(np.abs(pred - t) / t))


def _rel_sse(model: AllreduceCostModel, n: np.ndarray, t: np.ndarray) -> float:
    return float(np.sum(((model.times_s(n) - t) / t) ** 2))


def _fit_lines(n: np.ndarray, t: np.ndarray, source: str, split_above: float) -> AllreduceCostModel:
    alpha, beta = _wls_line(n, t)
    best = AllreduceCostModel.linear(alpha, beta, source)
    _, rel = _errors(best, n, t)
    sizes = np.unique(n)
    if rel > split_above and len(sizes) >= 4:
        line_sse = best_sse = _rel_sse(best, n, t)
        for cut in sizes[2:-1]:
            lo, hi = n < cut, n >= cut
            a1, b1 = _wls_line(n[lo], t[lo])
            a2, b2 = _wls_line(n[hi], t[hi])
            cand = AllreduceCostModel(
                (CostSegment(0, a1, b1), CostSegment(int(cut), a2, b2)), source=source)
            sse = _rel_sse(cand, n, t)
            if sse < line_sse / 2 and sse < best_sse:
                best, best_sse = cand, sse
    return best


def fit_allreduce(
    nbytes: Sequence[float], times_s: Sequence[float], source: str, split_above: float = 0.15,
) -> AllreduceCostModel:
    """Fit an :class:`AllreduceCostModel` to ``(nbytes, seconds)`` samples.

    Repeated sizes are fine (each sample counts).  Needs samples of at least two
    distinct sizes and positive times.  Outliers (a noisy small message on a busy
    host) are dropped one at a time, at most a fifth of the samples: the worst
    sample goes while its relative error exceeds both 10% and three times the
    median relative error.  ``n_samples`` counts the samples kept.
    """
    n = np.asarray(nbytes, dtype=np.float64)
    t = np.asarray(times_s, dtype=np.float64)
    if n.shape != t.shape or n.ndim != 1:
        raise ProfileError("fit: sizes and times must be equal-length sequences")
    if len(np.unique(n)) < 2:
        raise ProfileError("fit: need samples of at least two message sizes")
    if np.any(t <= 0) or not np.all(np.isfinite(t)):
        raise ProfileError("fit: times must be positive and finite")
    order = np.argsort(n, kind="stable")
    n, t = n[order], t[order]
    keep = np.ones(len(n), dtype=bool)
    for _ in range(len(n) // 5 + 1):
        model = _fit_lines(n[keep], t[keep], source, split_above)
        rel = np.abs(model.times_s(n) - t) / t
        worst = int(np.argmax(np.where(keep, rel, -1.0)))
        if rel[worst] <= max(0.1, 3.0 * float(np.median(rel[keep]))) or keep.sum() - 1 < 3 \
                or len(np.unique(n[keep])) <= 2 or (~keep).sum() >= len(n) // 5:
            break
        keep[worst] = False
    rmse, max_rel = _errors(model, n[keep], t[keep])
    return AllreduceCostModel(model.segments, rmse_s=rmse, max_rel_err=max_rel, n_samples=int(keep.sum()),
                              source=source)
