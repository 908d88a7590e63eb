"""Allreduce cost-model fitting."""
from __future__ import annotations

import numpy as np
import pytest

from gdat.bank.plans import link_class
from gdat.core.cost_model import MAX_BANDWIDTH_BYTES_PER_S, AllreduceCostModel, CostSegment
from gdat.errors import ProfileError
from gdat.profiling.allreduce_fit import fit_allreduce

SIZES = [2 ** k for k in range(12, 26)]


def test_recovers_a_line_with_noise():
    rng = np.random.default_rng(1)
    t = [(50e-6 + 4e-9 * n) * rng.uniform(0.97, 1.03) for n in SIZES]
    m = fit_allreduce(SIZES, t, "test")
    assert len(m.segments) == 1
    assert abs(m.alpha_s / 50e-6 - 1) < 0.1 and abs(m.beta_s_per_byte / 4e-9 - 1) < 0.05
    assert m.max_rel_err < 0.05 and m.n_samples == len(SIZES)


def test_two_regimes_give_two_segments():
    t = [30e-6 + 1e-9 * n if n < 1 << 18 else 200e-6 + 8e-9 * n for n in SIZES]
    m = fit_allreduce(SIZES, t, "test")
    assert len(m.segments) == 2 and m.segments[1].min_bytes == 1 << 18
    assert abs(m.beta_s_per_byte / 8e-9 - 1) < 1e-6
    assert m.max_rel_err < 1e-6


def test_a_spike_is_dropped_as_an_outlier():
    t = [50e-6 + 4e-9 * n for n in SIZES]
    t[6] *= 5
    m = fit_allreduce(SIZES, t, "test")
    assert m.n_samples == len(SIZES) - 1
    assert abs(m.beta_s_per_byte / 4e-9 - 1) < 1e-6


def test_bad_samples_are_rejected():
    with pytest.raises(ProfileError):
        fit_allreduce([1, 1, 1], [1e-3, 1e-3, 1e-3], "test")
    with pytest.raises(ProfileError):
        fit_allreduce([1, 2], [1e-3, -1.0], "test")
    with pytest.raises(ProfileError):
        AllreduceCostModel((CostSegment(5, 1e-6, 1e-9),))


def test_piecewise_evaluation_and_lower_line():
    m = AllreduceCostModel((CostSegment(0, 1e-5, 2e-9), CostSegment(1000, 5e-5, 1e-9)))
    assert m.time_s(999) == pytest.approx(1e-5 + 999 * 2e-9)
    assert m.time_s(1000) == pytest.approx(5e-5 + 1000 * 1e-9)
    assert np.allclose(m.times_s(np.array([999, 1000])), [m.time_s(999), m.time_s(1000)])
    a, b = m.lower_line()
    assert all(a + b * n <= m.time_s(n) for n in (0, 10, 999, 1000, 10 ** 7))
    assert AllreduceCostModel.from_dict(m.to_dict(), "m") == m


def test_bandwidth_is_one_over_beta_and_capped_where_the_fit_clamped_beta_to_zero():
    assert AllreduceCostModel.linear(1e-4, 4e-9).bandwidth_bytes_per_s == pytest.approx(2.5e8)
    flat = AllreduceCostModel.linear(1e-4, 0.0)
    assert flat.bandwidth_bytes_per_s == MAX_BANDWIDTH_BYTES_PER_S
    assert link_class(flat.bandwidth_bytes_per_s) == 48  # the key and the stored entry agree
