"""The noise rule and the equivalence check."""
from __future__ import annotations

import math

import torch

from aoe_full.measure import MeasureConfig, Timing, compare, relative_error

CFG = MeasureConfig(rounds=15, min_gain=0.02, alpha=0.05)


def _t(samples):
    return Timing(list(samples), 0.0)


def test_consistent_speedup_beats():
    base = _t([1.0 + 0.01 * i for i in range(15)])
    cand = _t([0.9 * (1.0 + 0.01 * i) for i in range(15)])
    c = compare(cand, base, CFG)
    assert c.beats and c.wins == 15 and abs(c.median_ratio - 0.9) < 1e-9


def test_noise_does_not_beat():
    base = _t([1.0] * 15)
    cand = _t([0.8, 1.2] * 7 + [0.8])  # faster in 8 of 15 rounds only
    assert not compare(cand, base, CFG).beats


def test_gain_below_threshold_does_not_beat():
    base = _t([1.0] * 15)
    cand = _t([0.99] * 15)  # always faster, but by 1% < min_gain
    c = compare(cand, base, CFG)
    assert c.wins == 15 and not c.beats


def test_sign_test_needs_twelve_of_fifteen():
    base = _t([1.0] * 15)
    assert compare(_t([0.5] * 12 + [1.5] * 3), base, CFG).beats
    assert not compare(_t([0.5] * 11 + [1.5] * 4), base, CFG).beats


def test_relative_error():
    a = torch.tensor([1.0, -2.0, 4.0])
    assert relative_error(a, a.clone()) == 0.0
    assert relative_error(a, a + 1e-6) < 1.0
    assert relative_error(a, a + 1e-2) > 1.0
    assert relative_error((a,), (a, a)) == math.inf
    assert relative_error(a, a.double()) == math.inf
    nan = torch.tensor([1.0, float("nan")])
    assert relative_error(nan, nan.clone()) == 0.0
    assert relative_error(nan, torch.tensor([1.0, 2.0])) == math.inf


def test_analytically_zero_tensors_are_judged_against_the_result_scale():
    big = torch.ones(4)
    noise_ref, noise_got = torch.full((3,), 1e-9), torch.full((3,), 0.9e-9)
    assert relative_error((big, noise_ref), (big, noise_got)) <= 1.0
    # alone, or with a real difference, the same noise still counts
    assert relative_error(noise_ref, noise_got) > 1.0
    assert relative_error((big, torch.full((3,), 1e-2)), (big, torch.full((3,), 2e-2))) > 1.0
