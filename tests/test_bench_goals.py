"""The steady-state benchmark's reading of issue 11's goals, on made-up rounds
(benchmarks/bench_steady_state.py; the benchmark itself runs outside CI)."""
from __future__ import annotations

from benchmarks.bench_steady_state import goals

CAPS = ["cap=1", "cap=5"]


def _round(default: float, default_2: float, cap1: float, cap5: float, gdat: float) -> dict:
    return {"default": default, "default-2": default_2, "cap=1": cap1, "cap=5": cap5, "gdat": gdat}


def test_goals_met_when_gdat_tracks_the_best_cap_in_every_round():
    rows = [_round(100, 104, 85, 90, 84), _round(102, 98, 86, 92, 85), _round(99, 101, 84, 88, 84)]
    lines = goals(rows, CAPS)
    assert all("NOT met" not in line for line in lines), lines
    assert "3 round(s)" in lines[0]


def test_one_slow_gdat_round_misses_the_worst_run_goal_but_not_the_noise_band():
    rows = [_round(100, 110, 85, 90, 84), _round(100, 98, 86, 92, 104), _round(99, 101, 84, 88, 84)]
    worst, median, band = goals(rows, CAPS)
    assert "NOT met (worst 1.040)" in worst
    assert "met (1.000" in median  # 84/85, 104/86, 84/84: median 1.000
    assert "noise band 1.100" in band and "NOT met" not in band


def test_rounds_where_no_cap_gains_5_percent_do_not_judge_the_worst_run():
    rows = [_round(100, 100, 97, 99, 101), _round(100, 100, 96, 99, 99)]
    assert goals(rows, CAPS)[0].endswith("n/a")


def test_a_gdat_job_beyond_the_noise_band_is_not_met():
    rows = [_round(100, 102, 85, 90, 84), _round(100, 99, 86, 92, 110)]
    assert "NOT met (worst 1.100)" in goals(rows, CAPS)[2]
