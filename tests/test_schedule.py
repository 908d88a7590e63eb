"""Search, simulator and peer plans under the model (no processes needed)."""
from __future__ import annotations

import itertools
import time

import numpy as np
from hypothesis import given, settings, strategies as st

from gdat.cost_model import AllreduceCostModel, Contention, CostSegment
from gdat.plan import BucketPlan
from gdat.schedule.baselines import horovod_plan, mgwfbp_plan, rank_candidates, uniform_plans
from gdat.schedule.search import optimal_plan
from gdat.schedule.simulator import comm_end, lower_bound_s, simulate
from gdat.timeline import ReadyTimeline


def make_timeline(gaps, sizes, post=0.001, start=0.002, dtypes=None) -> ReadyTimeline:
    ready = list(np.cumsum(gaps) + start)
    n = len(sizes)
    return ReadyTimeline(order=tuple(range(n - 1, -1, -1)), nbytes=tuple(sizes),
                         dtypes=tuple(dtypes or ["float32"] * n), ready_s=tuple(ready),
                         backward_start_s=start, backward_end_s=ready[-1] + 1e-4, post_s=post)


timelines = st.integers(1, 9).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0, 5e-3), min_size=n, max_size=n),
    st.lists(st.integers(0, 8) .map(lambda k: 4 * 4 ** k), min_size=n, max_size=n)))
costs = st.builds(lambda a, b: AllreduceCostModel.linear(a, b),
                  st.floats(1e-6, 2e-3), st.floats(1e-10, 1e-8))
contentions = st.builds(Contention, st.floats(1, 2), st.floats(1, 3))


def all_partitions(n):
    for cuts in itertools.product([False, True], repeat=n - 1):
        yield [j + 1 for j, c in enumerate(cuts) if c] + [n]


def step_of(t, ends, cost, cont, label="x"):
    return simulate(t, BucketPlan.from_ends(t.order, t.nbytes, t.dtypes, ends, label), cost, cont).step_s


@settings(max_examples=150, deadline=None)
@given(timelines, costs, contentions)
def test_optimum_equals_brute_force_and_beats_every_partition(tl, cost, cont):
    gaps, sizes = tl
    t = make_timeline(gaps, sizes)
    best = optimal_plan(t, cost, cont)
    assert best.param_order == t.order  # every gradient exactly once, in ready order
    best_s = simulate(t, best, cost, cont).step_s
    brute = min(step_of(t, ends, cost, cont) for ends in all_partitions(len(sizes))
                if all(sizes[e - 1] > 0 for e in ends[:-1]))
    assert best_s <= brute + 1e-12
    assert best_s >= brute - 1e-12
    assert lower_bound_s(t, cost, cont) <= best_s + 1e-12


@settings(max_examples=100, deadline=None)
@given(timelines, costs, contentions, st.integers(1, 4))
def test_bucket_limited_optimum_is_best_within_the_limit(tl, cost, cont, k):
    gaps, sizes = tl
    t = make_timeline(gaps, sizes)
    best = optimal_plan(t, cost, cont, max_buckets=k)
    assert len(best.buckets) <= k
    best_s = simulate(t, best, cost, cont).step_s
    for ends in all_partitions(len(sizes)):
        if len(ends) <= k and all(sizes[e - 1] > 0 for e in ends[:-1]):
            assert best_s <= step_of(t, ends, cost, cont) + 1e-12


@settings(max_examples=100, deadline=None)
@given(timelines, costs, contentions, st.data())
def test_optimum_never_worse_than_peers_or_random_partitions(tl, cost, cont, data):
    gaps, sizes = tl
    t = make_timeline(gaps, sizes)
    best_s = simulate(t, optimal_plan(t, cost, cont), cost, cont).step_s
    peers = [*uniform_plans(t, (1e-5, 1e-3, 0.01, 1, 25)), mgwfbp_plan(t, cost, cont),
             horovod_plan(t, 1 << 20, 1e-3)]
    for p in peers:
        assert best_s <= simulate(t, p, cost, cont).step_s + 1e-12, p.label
    n = len(sizes)
    cuts = data.draw(st.lists(st.booleans(), min_size=n - 1, max_size=n - 1))
    ends = [j + 1 for j, c in enumerate(cuts) if c and sizes[j] > 0] + [n]
    assert best_s <= step_of(t, ends, cost, cont) + 1e-12


def test_comm_end_is_work_conserving_and_monotone():
    rng = np.random.default_rng(0)
    for _ in range(200):
        s, w1, w2, tb = rng.uniform(0, 1, 4)
        k = rng.uniform(1, 4)
        assert abs(comm_end(comm_end(s, w1, tb, k), w2, tb, k) - comm_end(s, w1 + w2, tb, k)) < 1e-12
        assert comm_end(s + 0.01, w1, tb, k) >= comm_end(s, w1, tb, k)


def test_simulation_of_a_hand_computed_case():
    # two gradients ready at 1 ms and 3 ms, 1000 B each; t(n) = 1 ms + 1 us/B
    t = ReadyTimeline((1, 0), (1000, 1000), ("float32", "float32"), (0.001, 0.003), 0.0, 0.004, 0.0005)
    cost = AllreduceCostModel.linear(1e-3, 1e-6)
    split = simulate(t, BucketPlan.from_ends(t.order, t.nbytes, t.dtypes, [1, 2]), cost)
    assert split.start_s == (0.001, 0.003) and np.allclose(split.end_s, (0.003, 0.005))
    assert np.isclose(split.step_s, 0.0055)
    one = simulate(t, BucketPlan.from_ends(t.order, t.nbytes, t.dtypes, [2]), cost)
    assert np.isclose(one.comm_end_s, 0.006)
    # comm slowed 2x while backward runs (until 4 ms): bucket 1 (2 ms of work) does
    # 1.5 ms of work from 1 to 4 ms, the last 0.5 ms at full rate
    slow = simulate(t, BucketPlan.from_ends(t.order, t.nbytes, t.dtypes, [1, 2]), cost, Contention(1.0, 2.0))
    assert np.isclose(slow.end_s[0], 0.0045)


def test_piecewise_cost_and_mixed_dtypes_respected():
    cost = AllreduceCostModel((CostSegment(0, 1e-4, 1e-8), CostSegment(1 << 20, 5e-4, 5e-9)))
    t = make_timeline([1e-3] * 6, [1 << 18] * 6, dtypes=["float32"] * 3 + ["float16"] * 3)
    plan = optimal_plan(t, cost)
    assert all(len({t.dtypes[t.order.index(p)] for p in b.params}) == 1 for b in plan.buckets)


def test_rank_candidates_are_distinct_best_first_and_near_ties_diversified():
    t = make_timeline([2e-4] * 40, [1 << 18] * 40)
    cost = AllreduceCostModel.linear(2e-4, 4e-9)
    cont = Contention(1.1, 1.3)
    ranked = rank_candidates(t, cost, cont, k=5)
    everything = rank_candidates(t, cost, cont, k=1000)
    steps = [r.sim.step_s for r in ranked]
    assert len(ranked) == 5 and steps[0] == min(r.sim.step_s for r in everything)
    assert ranked[0].plan.label.startswith("optimal")
    assert all(not a.plan.same_buckets(b.plan) for a, b in itertools.combinations(ranked, 2))
    # every pick is within 2% of the best plan not yet picked at that point
    for i in range(1, 5):
        rest = [r for r in everything if all(not r.plan.same_buckets(c.plan) for c in ranked[:i])]
        assert steps[i] <= min(r.sim.step_s for r in rest) * 1.02 + 1e-12


def test_search_time_for_2000_parameters_is_under_a_second():
    t = make_timeline(list(np.full(2000, 5e-5)), [4 * 4 ** (k % 7) for k in range(2000)])
    cost = AllreduceCostModel.linear(1e-4, 2e-9)
    began = time.perf_counter()
    optimal_plan(t, cost, Contention(1.2, 1.5))
    elapsed = time.perf_counter() - began
    # a loose bound for a noisy shared CI machine; the benchmark reports the real figure
    assert elapsed < 5.0


def test_candidates_for_a_mixed_dtype_model_are_all_formable_by_ddp():
    dtypes = ["float32", "float16"] * 10
    t = make_timeline([3e-4] * 20, [1 << 18] * 20, dtypes=dtypes)
    ranked = rank_candidates(t, AllreduceCostModel.linear(2e-4, 4e-9), Contention(), k=6)
    assert ranked
    for r in ranked:
        r.plan.ddp_caps_mb(t.order, t.nbytes, t.dtypes)  # raises if DDP could not form it
