"""The tuner's measurement schedule, window statistics and adoption rule, alone."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gdat.decide.calendar import TRANSITION_STEPS, plan_calendar
from gdat.decide.confirm import steady_state_check
from gdat.decide.verdict import (
    BASELINE,
    FLOOR,
    Block,
    Z,
    beats,
    block_variance_terms,
    contenders,
    decide,
    decide_blocks,
    decide_blocks_lossy_last,
    round_order,
    standings,
    step_sigma,
)
from gdat.decide.windows import StepTimer, WindowStats, window_stats


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
    monkeypatch.setattr("gdat.decide.windows.time", SimpleNamespace(perf_counter=lambda: next(clock)))
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
    so it counts in the budget: a 30-step script is tuned to the end; the
    steady-state confirmation follows."""
    s = plan_calendar(30)
    assert (s.warmup, s.profile, s.measure, s.blocks, s.confirm) == (2, 3, 3, 5, 6)
    assert s.compute_steps == range(2, 5) and s.overlap_steps == range(5, 8)
    assert [s.block_start(b) for b in range(6)] == [8, 12, 16, 20, 24, 28]
    assert [s.block_steps(b) for b in range(2)] == [range(9, 12), range(13, 16)]
    assert s.total == 29
    assert [s.block_ending_at(step) for step in (8, 11, 12, 16, 28, 32)] == [None, None, 0, 1, 4, None]
    assert s.confirm_steps(28) == range(29, 35)
    # after an adoption: the user's configuration switched in at 35, measured 36..38, confirmed at 39
    assert s.recheck_steps(28) == range(36, 39)
    assert (s.confirmed_at(28, adopted=True), s.confirmed_at(28, adopted=False)) == (39, 35)
    assert s.steady_weight(4, 28) == pytest.approx((31.5 - 26) / (37 - 26))
    assert plan_calendar(33).blocks == 6 and plan_calendar(33).total == 33


def test_a_budget_too_small_for_two_blocks_gives_none():
    assert plan_calendar(16).blocks == 0
    assert plan_calendar(17).blocks == 2
    assert plan_calendar(1000).blocks == 247


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200), st.integers(0, 5), st.integers(1, 6), st.integers(1, 8))
def test_schedule_phases_are_contiguous_and_within_budget(max_steps, warmup, profile, measure):
    s = plan_calendar(max_steps, warmup, profile, measure)
    if s.blocks == 0:
        assert warmup + 2 * profile + 2 * (TRANSITION_STEPS + measure) + 1 > max_steps
        return
    assert s.total <= max_steps
    assert s.compute_steps.start == warmup and s.compute_steps.stop == s.overlap_steps.start
    stop = s.overlap_steps.stop
    for b in range(s.blocks):
        assert s.block_start(b) == stop and s.block_steps(b).start == stop + TRANSITION_STEPS
        stop = s.block_steps(b).stop
        assert s.block_ending_at(stop) == b
    assert stop + 1 == s.total  # the decision step


# --- interleaved blocks, on window data -------------------------------------------------
def blocks_of(plans, step_ms, measure=3, rounds=None):
    """Blocks of ``measure`` steps: block ``j`` runs ``plans[j]``; ``step_ms(j, k, plan)``
    gives the ``k``-th step's time in ms."""
    return [Block(p, (rounds or [1] * len(plans))[j], WindowStats(tuple(step_ms(j, k, p) / 1e3 for k in range(measure))))
            for j, p in enumerate(plans)]


JITTER = (-0.4, 0.0, 0.5)  # ms, the same small step-to-step noise in every block


def test_a_linear_drift_cancels_in_paired_blocks():
    """Every plan equal, the machine speeding up 30 ms per block: the paired
    differences are 0 and nothing is adopted."""
    blocks = blocks_of([BASELINE, 0, 1, 1, BASELINE], lambda j, k, p: 1700 - 30 * j + JITTER[k])
    table = standings(blocks)
    assert [s.candidate for s in table] == [0, 1]
    assert all(abs(s.diff_s) < 1e-12 for s in table)
    assert decide_blocks(blocks).winner is None


# Shaped like issue 11's run A: the user's configuration measured early (4 steps at
# ~1673 ms), the candidates after profiling, when the machine had sped up by ~6%
# (~1576 ms); in steady state nothing was faster than DDP's default.
def _run_a_steps(j, k, plan):
    return 1673 - 20 * j + (3, -2, 0, 4, -1)[(j + k) % 5]


def test_drift_fooled_the_old_rule_and_not_the_paired_rule():
    early = WindowStats(tuple(_run_a_steps(0, k, BASELINE) / 1e3 for k in range(4)))
    later = [WindowStats(tuple(_run_a_steps(j, k, 0) / 1e3 for k in range(5))) for j in (5, 6)]
    assert decide(early, later).winner is not None  # the old rule adopted a plan no faster
    interleaved = blocks_of([BASELINE, 0, 1, BASELINE, 1, 0, BASELINE], lambda j, k, p: _run_a_steps(5 + j, k, p))
    verdict = decide_blocks(interleaved)
    assert verdict.winner is None and not verdict.noisy
    assert verdict.reason.startswith("no candidate beat the baseline")
    two = blocks_of([BASELINE, 0, 1, 1, BASELINE], lambda j, k, p: _run_a_steps(5 + j, k, p))
    verdict = decide_blocks(two)  # two baseline blocks cannot tell the drift from a level shift
    assert verdict.winner is None and verdict.noisy


def test_two_baseline_blocks_count_their_difference_as_a_level_shift():
    """Shaped like a recorded launch: the last baseline block ran 34 ms slower than
    the first, and the reference interpolated towards it made the later candidates
    look 12-27 ms faster than the first one.  Their difference is a block median's
    variance, so no candidate is adopted on those blocks alone."""
    medians = {0: 601.8, 1: 582.4, 2: 584.6, 3: 572.0, 4: 635.7}
    blocks = blocks_of([BASELINE, 0, 1, 2, BASELINE], lambda j, k, p: medians[j] + JITTER[k])
    within, between = block_variance_terms(blocks)
    assert between == pytest.approx((0.6357 - 0.6018) ** 2 / 2)
    assert math.sqrt(between) > 20 * math.sqrt(within / 3)
    assert all(-s.diff_s < s.threshold_s for s in standings(blocks))
    one = blocks_of([BASELINE, 0], lambda j, k, p: medians[j] + JITTER[k])
    assert block_variance_terms(one)[1] == 0.0


def test_a_real_gain_is_found_against_a_drift_the_other_way():
    """Candidate 1 is 5% faster while the machine slows down: adopted; candidate 0
    (as fast as the baseline) is not."""
    blocks = blocks_of([BASELINE, 0, 1, BASELINE, 1, 0, BASELINE],
                       lambda j, k, p: (1000 + 15 * j) * (0.95 if p == 1 else 1.0) + JITTER[k])
    verdict = decide_blocks(blocks)
    assert verdict.winner == 1 and "paired block" in verdict.reason
    d = {s.candidate: s.diff_s * 1e3 for s in standings(blocks)}
    assert d[1] == pytest.approx(-0.05 * (1000 + 15 * 3), rel=0.02) and abs(d[0]) < 1.0


def test_successive_halving_drops_clear_losers_and_keeps_close_ones():
    speed = {BASELINE: 100.0, 0: 90.0, 1: 90.5, 2: 120.0}
    blocks = blocks_of([BASELINE, 0, 1, 2], lambda j, k, p: speed[p] + JITTER[k] / 10)
    assert [s.candidate for s in contenders(blocks)] == [0, 1]  # 2 is slower than the baseline
    speed[1] = 95.0
    blocks = blocks_of([BASELINE, 0, 1, 2], lambda j, k, p: speed[p] + JITTER[k] / 10)
    assert [s.candidate for s in contenders(blocks)] == [0]  # 1 is clearly slower than 0


def test_rounds_alternate_the_baseline_first_and_last():
    assert round_order(1, [0, 1]) == [BASELINE, 0, 1]
    assert round_order(2, [1]) == [1, BASELINE]


def test_the_noise_is_pooled_over_blocks_and_a_noisy_run_adopts_nothing_on_the_blocks_alone():
    quiet = blocks_of([BASELINE, 0], lambda j, k, p: 100 + JITTER[k])
    assert step_sigma(quiet) == pytest.approx(1.4826 * 0.45e-3)
    noisy = blocks_of([BASELINE, 0, BASELINE], lambda j, k, p: (100 if p == BASELINE else 90) + 10 * JITTER[k])
    verdict = decide_blocks(noisy)
    assert verdict.trial and verdict.noisy and "(the run was noisy): tried in steady state" in verdict.reason
    equal = blocks_of([BASELINE, 0, BASELINE], lambda j, k, p: 100 + 10 * JITTER[k])
    verdict = decide_blocks(equal)
    assert verdict.winner is None and verdict.noisy and verdict.reason.endswith("(the run was noisy)")


def test_a_lead_short_of_the_noise_is_tried_by_the_block_rule():
    """Candidate 0 leads by 11 ms, under its threshold (the blocks' noise is +-6 ms):
    the block rule tries it (a plan on trial is then judged by the sequential test,
    tests/test_sequential.py).  A lead within one standard error is not tried."""
    wide = (-6.0, 0.0, 6.0)
    blocks = blocks_of([BASELINE, 0, 1, 0, BASELINE], lambda j, k, p: {BASELINE: 100, 0: 89, 1: 99}[p] + wide[k])
    lead = {s.candidate: s for s in standings(blocks)}[0]
    assert lead.se_s < -lead.diff_s < lead.threshold_s
    verdict = decide_blocks(blocks)
    assert verdict.winner == 0 and verdict.trial and "short of the noise threshold" in verdict.reason
    close = blocks_of([BASELINE, 0, BASELINE], lambda j, k, p: (100 if p == BASELINE else 99.5) + wide[k])
    assert decide_blocks(close).winner is None


def test_a_compressed_candidate_is_never_tried_on_a_lead_short_of_the_noise():
    wide = (-6.0, 0.0, 6.0)
    blocks = blocks_of([BASELINE, 0, 1, BASELINE], lambda j, k, p: {BASELINE: 100, 0: 99.8, 1: 88}[p] + wide[k])
    assert decide_blocks(blocks).trial and decide_blocks(blocks).winner == 1
    verdict = decide_blocks_lossy_last(blocks, [1])
    assert verdict.winner is None and "is not tried" in verdict.reason


def window_ms(*steps_ms: float) -> WindowStats:
    return WindowStats(tuple(x / 1e3 for x in steps_ms))


def test_the_steady_state_window_is_paired_with_the_baseline_interpolated_around_it():
    """The confirmation's measurement (its judgement: tests/test_sequential.py): the
    window's median against the baseline interpolated between the last baseline
    block and the block after it, with the noise a slower window must exceed."""
    blocks = blocks_of([BASELINE, 0, 0, BASELINE], lambda j, k, p: (100 if p == BASELINE else 90) + JITTER[k])
    after = window_ms(99.6, 100.0, 100.5)
    check = steady_state_check(blocks, steady(90.0, jitter_ms=0.4), after, 0.5)
    assert check.reference_s == pytest.approx(0.100) and check.diff_s == pytest.approx(-0.010)
    assert FLOOR * 0.100 <= check.threshold_s < 0.002 and check.steps == 5
    moved = steady_state_check(blocks, steady(90.0, jitter_ms=0.4), window_ms(109.6, 110.0, 110.5), 0.9)
    assert moved.reference_s == pytest.approx(0.1 * 0.1 + 0.9 * 0.110)
    with pytest.raises(ValueError, match="interpolation weight"):
        steady_state_check(blocks, steady(90.0), after, 1.5)
    with pytest.raises(ValueError, match="not been judged"):
        _ = check.holds
