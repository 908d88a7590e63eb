"""The joint split/compression search against brute force under the model (no processes)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gdat.core.cost_model import AllreduceCostModel, CastCost, Contention
from gdat.core.plan import BucketPlan
from gdat.decide.verdict import BASELINE, Block, decide_blocks_lossy_last
from gdat.decide.windows import WindowStats
from gdat.errors import ProfileError
from gdat.report.gdat_report import compression_section
from gdat.schedule.candidates import Candidates, rank_candidates, with_compressed_candidate
from gdat.schedule.compress_search import SLACK, compressed_plan, suffix_ends
from gdat.schedule.search import optimal_plan
from gdat.schedule.simulator import Calibration, simulate
from tests.test_schedule import all_partitions, contentions, make_timeline

timelines = st.integers(1, 7).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0, 5e-3), min_size=n, max_size=n),
    st.lists(st.integers(1, 8).map(lambda k: 4 * 4 ** k), min_size=n, max_size=n)))
costs = st.builds(lambda a, b, c: AllreduceCostModel.linear(a, b).with_cast(CastCost("bf16", 0.0, c)),
                  st.floats(1e-6, 2e-3), st.floats(1e-10, 1e-8), st.floats(0, 5e-9))


def _compressed_plan(t, ends, s, label="x"):
    plan = BucketPlan.from_ends(t.layout, ends, label)
    starts = [0, *ends[:-1]]
    return plan.with_compression([k for k, a in enumerate(starts) if a >= s], "bf16", label)


@settings(max_examples=150, deadline=None)
@given(timelines, costs, contentions)
def test_each_suffix_start_gets_the_earliest_end_of_brute_force(tl, cost, cont):
    gaps, sizes = tl
    t = make_timeline(gaps, sizes)
    n = len(sizes)
    final, head, tail = suffix_ends(t, cost, cont)
    for s in range(n + 1):
        brute = min(simulate(t, _compressed_plan(t, ends, s), cost, cont).comm_end_s
                    for ends in all_partitions(n) if s in (0, *ends))
        assert final[s] == pytest.approx(brute, rel=1e-12, abs=1e-15)
        got = simulate(t, _compressed_plan(t, head[s] + tail[s], s), cost, cont).comm_end_s
        assert got == pytest.approx(final[s], rel=1e-12, abs=1e-15)
    exact = simulate(t, optimal_plan(t, cost, cont), cost, cont).comm_end_s
    assert final[n] == pytest.approx(exact, rel=1e-12, abs=1e-15)


@settings(max_examples=150, deadline=None)
@given(timelines, costs, contentions)
def test_the_choice_is_within_slack_of_the_best_and_compresses_least(tl, cost, cont):
    gaps, sizes = tl
    t = make_timeline(gaps, sizes)
    n = len(sizes)
    plan = compressed_plan(t, cost, cont, "bf16")
    steps = {s: min(simulate(t, _compressed_plan(t, ends, s), cost, cont).step_s
                    for ends in all_partitions(n) if s in (0, *ends)) for s in range(n + 1)}
    best = min(steps.values())
    fewest = max(s for s, v in steps.items() if v <= best * (1 + SLACK))
    if plan is None:
        assert fewest == n
        return
    assert plan.param_order == t.layout.order
    marked = [b.compress for b in plan.buckets]
    assert marked == sorted(marked), "compressed buckets form a suffix"
    squeezed = sum(b.nbytes for b in plan.buckets if b.compress)
    assert squeezed == sum(t.layout.nbytes[fewest:])
    assert simulate(t, plan, cost, cont).step_s == pytest.approx(steps[fewest], rel=1e-12)


def test_a_tail_exposed_on_a_slow_link_is_compressed_and_nothing_else():
    # 8 gradients of 1 MB ready every 10 ms, link 1 GB/s: only the last ones are exposed
    t = make_timeline([0.01] * 8, [1 << 20] * 8)
    cost = AllreduceCostModel.linear(1e-4, 1e-8).with_cast(CastCost("bf16", 0.0, 1e-10))
    plan = compressed_plan(t, cost, Contention(), "bf16")
    exact = optimal_plan(t, cost, Contention())
    assert plan is not None and plan.compressed and not plan.buckets[0].compress
    assert simulate(t, plan, cost).step_s < simulate(t, exact, cost).step_s
    assert sum(b.nbytes for b in plan.buckets if b.compress) < t.layout.total_bytes / 2
    fast = AllreduceCostModel.linear(1e-5, 1e-11).with_cast(CastCost("bf16", 0.0, 1e-10))
    assert compressed_plan(t, fast, Contention(), "bf16") is None  # nothing exposed: nothing compressed


def test_compression_needs_a_measured_cast_cost():
    t = make_timeline([0.01] * 3, [1 << 20] * 3)
    with pytest.raises(ProfileError, match="no cast cost"):
        compressed_plan(t, AllreduceCostModel.linear(1e-4, 1e-8), Contention(), "bf16")


def test_cost_model_round_trip_keeps_the_cast():
    cost = AllreduceCostModel.linear(1e-4, 1e-8).with_cast(CastCost("fp16", 1e-6, 2e-10))
    again = AllreduceCostModel.from_dict(cost.to_dict(), "x")
    assert again == cost and again.scaled(2.0, "y").cast == cost.cast
    assert AllreduceCostModel.from_dict(AllreduceCostModel.linear(1.0, 0.0).to_dict(), "x").cast is None
    assert cost.compressed_times_s(np.array([2e6]))[0] == pytest.approx(1e-4 + 1e-8 * 1e6 + 1e-6 + 2e-10 * 2e6)


def _steady(ms: float) -> WindowStats:
    return WindowStats((ms / 1e3,) * 5)


def _blocks(exact_ms: float, lossy_ms: float) -> list[Block]:
    return [Block(plan, r, _steady(ms)) for r in range(3)
            for plan, ms in ((BASELINE, 100.0), (0, exact_ms), (1, lossy_ms))]


def test_a_compressed_candidate_must_beat_the_fastest_exact_configuration():
    assert decide_blocks_lossy_last(_blocks(90, 89.5), [1]).winner == 0
    won = decide_blocks_lossy_last(_blocks(90, 85), [1])
    assert won.winner == 1 and "compressed candidate" in won.reason
    assert decide_blocks_lossy_last(_blocks(101, 98.5), [1]).winner == 1
    assert decide_blocks_lossy_last(_blocks(101, 99.5), [1]).winner is None
    assert decide_blocks_lossy_last(_blocks(95, 99), []).winner == 0


def test_the_compressed_candidate_takes_the_last_place_and_its_errors_are_reported():
    t = make_timeline([0.01] * 8, [1 << 20] * 8)
    cost = AllreduceCostModel.linear(1e-4, 1e-8).with_cast(CastCost("bf16", 0.0, 1e-10))
    ranked = rank_candidates(t, cost, Contention(), 3)
    found = Candidates(t, Calibration(cost, Contention(), 1.0), ranked[-1].plan, tuple(ranked[:2]))
    assert with_compressed_candidate(found, "bf16", 1) is found
    more = with_compressed_candidate(found, "bf16", 2)
    assert [r.plan.compressed for r in more.ranked] == [False, True]
    assert more.ranked[0] == found.ranked[0] and more.ranked[1].plan.label == "optimal+bf16"
    section = compression_section("bf16", more.ranked, {1: {len(more.ranked[1].plan.buckets) - 1: 0.0031}})
    buckets = section["candidates"][0]["compressed_buckets"]
    assert section["dtype"] == "bf16" and buckets[-1]["relative_error"] == 0.0031
    assert all(b["relative_error"] is None for b in buckets[:-1])
    squeezed = more.ranked[1].plan
    assert sum(b["nbytes"] for b in buckets) == sum(b.nbytes for b in squeezed.buckets if b.compress)
