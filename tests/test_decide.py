"""The tuner's measurement schedule, window statistics and adoption rule, alone."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from hypothesis import given, settings, strategies as st

from gdat.decide import FLOOR, Z, beats, decide
from gdat.measure import TRANSITION_STEPS, StepTimer, WindowStats, plan_schedule, window_stats


def steady(ms: float, jitter_ms: float = 0.0) -> WindowStats:
    """Five steps with median ``ms`` and median absolute deviation ``jitter_ms``."""
    return WindowStats(tuple((ms + jitter_ms * d) / 1e3 for d in (-1, 0, 1, -1, 1)))


def test_window_stats_take_the_slowest_rank_per_step():
    w = window_stats([[0.010, 0.020, 0.030], [0.012, 0.018, 0.031]])
    assert w.step_s == (0.012, 0.020, 0.031)
    assert w.median_s == 0.020


def test_window_statistics_follow_their_formulas():
    w = WindowStats((1.0, 2.0, 3.0, 4.0, 5.0))
    assert w.median_s == 3.0 and w.mad_s == 1.0
    assert w.se_s == pytest.approx(1.2533 * 1.4826 / math.sqrt(5))
    assert w.to_dict()["steps_ms"] == [1000.0, 2000.0, 3000.0, 4000.0, 5000.0]


def test_window_stats_reject_empty_and_ragged_windows():
    with pytest.raises(ValueError):
        window_stats([])
    with pytest.raises(ValueError):
        window_stats([[], []])
    with pytest.raises(ValueError, match="different lengths"):
        window_stats([[0.01, 0.02], [0.01]])


def test_step_timer_measures_the_interval_between_step_starts(monkeypatch):
    clock = iter([10.0, 10.5, 11.25])
    monkeypatch.setattr("gdat.measure.time", SimpleNamespace(perf_counter=lambda: next(clock)))
    timer = StepTimer()
    assert [timer.tick(), timer.tick(), timer.tick()] == [0, 1, 2]
    assert timer.step_s == {0: 0.5, 1: 0.75} and timer.steps == 3


def test_a_clear_winner_is_adopted_and_the_fastest_passing_one_wins():
    base = steady(10.0, jitter_ms=0.05)
    verdict = decide(base, [steady(8.0, jitter_ms=0.05), steady(7.0, jitter_ms=0.05), None])
    assert verdict.winner == 1
    assert not verdict.noisy
    assert verdict.noise_s == pytest.approx(max(Z * math.hypot(base.se_s, base.se_s), FLOOR * base.median_s))
    assert "beat the baseline by 3.00 ms" in verdict.reason


def test_a_gain_within_the_noise_floor_keeps_the_baseline():
    verdict = decide(steady(10.0), [steady(9.95)])  # 0.5% faster, below the 1% floor
    assert verdict.winner is None
    assert verdict.noise_s == pytest.approx(FLOOR * 0.010)
    assert verdict.reason == "no candidate beat the baseline by more than the measured noise"


def test_the_noise_floor_is_one_percent_of_the_baseline():
    base = steady(10.0)  # no spread: only the floor applies
    assert decide(base, [steady(9.91)]).winner is None
    assert decide(base, [steady(9.89)]).winner == 0


def test_a_noisy_baseline_is_reported_and_blocks_adoption():
    base = steady(10.0, jitter_ms=2.0)  # MAD 2 ms over 5 steps: threshold ~5 ms
    verdict = decide(base, [steady(7.0)])
    assert verdict.winner is None and verdict.noisy
    assert verdict.reason.endswith("(the run was noisy)")


def test_unmeasured_candidates_never_win_and_no_candidates_is_said_plainly():
    assert decide(steady(10.0), [None, None]).winner is None
    assert decide(steady(10.0), []).reason == "no candidate plan differed from the baseline"


def test_beats_is_the_decision_against_one_reference():
    assert beats(steady(10.0), steady(8.0))
    assert not beats(steady(8.0), steady(10.0))
    assert not beats(steady(10.0), steady(9.95))


def test_the_default_schedule_decides_within_thirty_steps():
    """The decision is taken at the start of the step after the last measured one,
    so it counts in the budget: a 30-step script is tuned to the end."""
    s = plan_schedule(30, 3)
    assert (s.warmup, s.baseline, s.profile, s.measure, s.candidates) == (2, 4, 3, 5, 2)
    assert s.baseline_steps == range(2, 6)
    assert s.compute_steps == range(6, 9) and s.overlap_steps == range(9, 12)
    assert [s.candidate_switch(i) for i in range(3)] == [12, 18, 24]
    assert [s.candidate_steps(i) for i in range(2)] == [range(13, 18), range(19, 24)]
    assert s.total == 25
    assert [s.candidate_ending_at(step) for step in (12, 17, 18, 24, 30)] == [None, None, 0, 1, None]
    assert plan_schedule(31, 3).candidates == 3 and plan_schedule(31, 3).total == 31


def test_a_budget_too_small_for_one_candidate_gives_none():
    assert plan_schedule(18, 3).candidates == 0
    assert plan_schedule(19, 3).candidates == 1
    assert plan_schedule(1000, 4).candidates == 4


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200), st.integers(1, 8), st.integers(0, 5), st.integers(1, 6), st.integers(1, 6),
       st.integers(1, 8))
def test_schedule_phases_are_contiguous_and_within_budget(max_steps, top_k, warmup, baseline, profile, measure):
    s = plan_schedule(max_steps, top_k, warmup, baseline, profile, measure)
    assert 0 <= s.candidates <= top_k
    if s.candidates == 0:
        assert warmup + baseline + 2 * profile + TRANSITION_STEPS + measure + 1 > max_steps
        return
    assert s.total <= max_steps
    assert s.baseline_steps.start == warmup
    assert s.baseline_steps.stop == s.compute_steps.start and s.compute_steps.stop == s.overlap_steps.start
    stop = s.overlap_steps.stop
    for i in range(s.candidates):
        assert s.candidate_switch(i) == stop and s.candidate_steps(i).start == stop + TRANSITION_STEPS
        stop = s.candidate_steps(i).stop
        assert s.candidate_ending_at(stop) == i
    assert stop + 1 == s.total  # the decision step
