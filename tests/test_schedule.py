"""Search, simulator and peer plans under the model (no processes needed)."""
from __future__ import annotations

import itertools
import time
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gdat.core.cost_model import AllreduceCostModel, Contention, CostSegment
from gdat.core.layout import FIXED_ORDER, GradientLayout, ParamInfo
from gdat.core.plan import BucketPlan
from gdat.core.profile import Profile, ReadyTimeline, fitted_copy_s_per_byte
from gdat.core.timeline import BucketSpan, RankTimeline, StepRecord
from gdat.errors import ProfileError
from gdat.schedule.baselines import horovod_plan, mgwfbp_plan, uniform_plans
from gdat.schedule.candidates import rank_candidates
from gdat.schedule.search import optimal_plan
from gdat.schedule.simulator import calibrate, comm_end, lower_bound_s, measured_plan, simulate


def make_timeline(gaps, sizes, post=0.001, start=0.002, dtypes=None, gamma=0.0, slots=1) -> ReadyTimeline:
    ready = list(np.cumsum(gaps) + start)
    n = len(sizes)
    grads = GradientLayout(tuple(range(n - 1, -1, -1)), tuple(sizes), tuple(dtypes or ["float32"] * n))
    return ReadyTimeline(layout=grads, ready_s=tuple(ready), backward_start_s=start,
                         backward_end_s=ready[-1] + 1e-4, post_s=post, copy_s_per_byte=gamma, allreduce_slots=slots)


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
    return simulate(t, BucketPlan.from_ends(t.layout, ends, label), cost, cont).step_s


@settings(max_examples=150, deadline=None)
@given(timelines, costs, contentions)
def test_optimum_equals_brute_force_and_beats_every_partition(tl, cost, cont):
    gaps, sizes = tl
    t = make_timeline(gaps, sizes)
    best = optimal_plan(t, cost, cont)
    assert best.param_order == t.layout.order  # every gradient exactly once, in ready order
    best_s = simulate(t, best, cost, cont).step_s
    brute = min(step_of(t, ends, cost, cont) for ends in all_partitions(len(sizes))
                if all(sizes[e - 1] > 0 for e in ends[:-1]))
    assert best_s <= brute + 1e-12
    assert best_s >= brute - 1e-12
    assert lower_bound_s(t, cost, cont) <= best_s + 1e-12


copy_rates = st.floats(0, 2e-8)  # seconds per byte of DDP's copy-back: up to a copy of 256 KiB in 5 ms


@settings(max_examples=150, deadline=None)
@given(timelines, costs, contentions, copy_rates, st.sampled_from([None, 1, 2, 3]))
def test_optimum_with_copy_back_equals_brute_force(tl, cost, cont, gamma, limit):
    """The copy-back makes the step ``gamma S + max(T'_b, max_k(e_k - gamma P_k)) +
    post``; the bisection over feasibility tables finds the best partition (within
    ``limit`` buckets) to its 1 ns tolerance."""
    gaps, sizes = tl
    t = make_timeline(gaps, sizes, gamma=gamma)
    best = optimal_plan(t, cost, cont, max_buckets=limit)
    assert limit is None or len(best.buckets) <= limit
    best_s = simulate(t, best, cost, cont).step_s
    brute = min(step_of(t, ends, cost, cont) for ends in all_partitions(len(sizes))
                if all(sizes[e - 1] > 0 for e in ends[:-1]) and (limit is None or len(ends) <= limit))
    assert brute - 1e-12 <= best_s <= brute + 2e-9
    assert lower_bound_s(t, cost, cont) <= best_s + 1e-12


@settings(max_examples=150, deadline=None)
@given(timelines, costs, contentions, copy_rates, st.data())
def test_a_shared_link_ends_communication_when_one_at_a_time_does(tl, cost, cont, gamma, data):
    """Two allreduces at once (gloo) share the link: the last one ends when it would
    one at a time (the link works whenever a ready bucket is unfinished), buckets
    start in order and never later than one at a time, and no plan beats the lower
    bound."""
    gaps, sizes = tl
    one, two = make_timeline(gaps, sizes, gamma=gamma), make_timeline(gaps, sizes, gamma=gamma, slots=2)
    n = len(sizes)
    cuts = data.draw(st.lists(st.booleans(), min_size=n - 1, max_size=n - 1))
    plan = BucketPlan.from_ends(one.layout, [j + 1 for j, c in enumerate(cuts) if c and sizes[j] > 0] + [n])
    serial, shared = simulate(one, plan, cost, cont), simulate(two, plan, cost, cont)
    assert shared.comm_end_s == pytest.approx(serial.comm_end_s, rel=1e-9, abs=1e-12)
    assert list(shared.start_s) == sorted(shared.start_s) and shared.start_s[0] == serial.start_s[0]
    assert all(s <= serial_s + 1e-12 for s, serial_s in zip(shared.start_s, serial.start_s))
    assert lower_bound_s(two, cost, cont) <= shared.step_s + 1e-12


def test_a_large_bucket_still_running_when_the_last_starts_leaves_its_copy_exposed():
    # bucket 0 (4000 B: 4 ms of link) ready at 1 ms, bucket 1 (1000 B: 1 ms) at 2 ms;
    # t(n) = 1 us/B, copy-back 1 us per 4 B, backward ends at 2.1 ms
    t = ReadyTimeline(GradientLayout((1, 0), (4000, 1000), ("float32", "float32")), (0.001, 0.002), 0.0, 0.0021,
                      0.0, copy_s_per_byte=2.5e-7, allreduce_slots=2)
    cost = AllreduceCostModel.linear(0.0, 1e-6)
    plan = BucketPlan.from_ends(t.layout, [1, 2])
    shared = simulate(t, plan, cost)
    # 1-2 ms: bucket 0 alone (3 ms of work left); then both at half rate: bucket 1
    # ends at 4 ms, bucket 0 at 6 ms; the copies (1 ms and 0.25 ms) follow it
    assert np.allclose(shared.end_s, (0.006, 0.004)) and np.isclose(shared.step_s, 0.00725)
    serial = simulate(replace(t, allreduce_slots=1), plan, cost)
    # one at a time: bucket 0 ends at 5 ms and is copied while bucket 1 runs (5-6 ms)
    assert np.allclose(serial.end_s, (0.005, 0.006)) and np.isclose(serial.step_s, 0.00625)


def _traced_step(k, kind, ends_ms, nbytes, gamma, c_s, bwd_end=0.05):
    """A recorded step whose optimizer starts after DDP's copy-back (``gamma``) and ``c_s``."""
    spans = tuple(BucketSpan(i, (i,), b, 0.04, e / 1e3) for i, (e, b) in enumerate(zip(ends_ms, nbytes)))
    f = bwd_end
    for e, b in zip(ends_ms, nbytes):
        f = max(f, e / 1e3) + gamma * b
    return StepRecord(k, kind, float(k), 0.01, 0.02, bwd_end, (), spans, f + c_s, f + c_s + 0.02, f + c_s + 0.03)


def test_the_copy_back_rate_is_told_from_other_work_by_the_bytes_each_step_leaves_to_copy():
    gamma, sizes = 2.5e-10, (8 << 20, 8 << 20)
    # compute-only steps: both buckets end together at the end; overlapped: the first long before
    steps = [_traced_step(k, "compute", (300, 301), sizes, gamma, 0.004) for k in range(3)]
    steps += [_traced_step(k, "overlap", (120, 301), sizes, gamma, 0.004) for k in range(3, 6)]
    assert fitted_copy_s_per_byte(steps) == pytest.approx(gamma, rel=0.13)  # the grid's resolution
    # every step leaving the same bytes: the gap is taken as copy-back
    same = [_traced_step(k, "overlap", (120, 301), sizes, gamma, 0.0) for k in range(4)]
    assert fitted_copy_s_per_byte(same) == pytest.approx(gamma, rel=0.13)
    assert fitted_copy_s_per_byte(same[:1]) == 0.0  # one step: nothing to fit
    # and no copy at all (gradients as bucket views) fits as none where the steps
    # leave different bytes to copy (the compute-only ones both buckets at once)
    views = [_traced_step(k, kind, ends, sizes, 0.0, 0.004)
             for k, (kind, ends) in enumerate([("compute", (300, 300))] * 3 + [("overlap", (120, 301))] * 3)]
    assert fitted_copy_s_per_byte(views) == 0.0


fixed_steps = st.integers(1, 8).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0, 5e-3), min_size=n, max_size=n),
    st.lists(st.integers(0, 8).map(lambda k: 4 * 4 ** k), min_size=n, max_size=n),
    st.lists(st.booleans(), min_size=n, max_size=n)))


def fixed_order_profile(ready, sizes, used, start=0.002, post=0.001) -> Profile:
    """One rank, one compute step of a find_unused DDP: parameter ``i`` (DDP index)
    became ready at ``start + ready[i]`` if ``used[i]``, else never (DDP marks it)."""
    params = tuple(ParamInfo(i, f"p{i}", (nb // 4,), "float32", nb) for i, nb in enumerate(sizes))
    grads = tuple(sorted(((i, start + r) for i, (r, u) in enumerate(zip(ready, used)) if u), key=lambda x: x[1]))
    end = start + max(ready) + 1e-4
    step = StepRecord(0, "compute", 0.0, start / 2, start, end, grads, step_end_s=end + post)
    return Profile(1, "gloo", "cpu", "x", params, (RankTimeline(0, "h", (step,)),), bucket_order=FIXED_ORDER)


def literal_fixed_step(profile, ends, cost, cont) -> float:
    """DDP's rule for its fixed buckets, written out independently of the search:
    order = reverse DDP index; a bucket launches when its latest member is ready and
    the bucket before it has launched (an unused parameter is ready at backward
    start); allreduces run one at a time; ``g`` as in the simulator."""
    step = profile.ranks[0].steps[0]
    t0, sigma, kappa = step.backward_start_s, cont.compute_stretch, cont.comm_slowdown
    raw = dict(step.grad_ready)
    order = [p.index for p in reversed(profile.params)]
    stretch = lambda t: t0 + sigma * (t - t0)  # noqa: E731
    bwd_end = stretch(max([step.backward_end_s, *raw.values()]))
    launch = end = -np.inf
    for a, b in zip([0, *ends], ends):
        members = order[a:b]
        launch = max(launch, max(stretch(raw.get(i, t0)) for i in members))
        nbytes = sum(profile.params[i].nbytes for i in members)
        end = comm_end(max(launch, end), cost.time_s(nbytes), bwd_end, kappa)
    return max(bwd_end, end) + (step.step_end_s - step.backward_end_s)


@settings(max_examples=150, deadline=None)
@given(fixed_steps, costs, contentions)
def test_fixed_order_optimum_equals_brute_force_over_ddps_own_rule(case, cost, cont):
    """find_unused_parameters=True: the search over contiguous partitions of DDP's
    fixed order is exact against every such partition under DDP's launch rule, with
    parameters unused in the step."""
    ready, sizes, used = case
    profile = fixed_order_profile(ready, sizes, used)
    t = profile.ready_timeline("compute")
    assert t.layout.order == tuple(range(len(sizes) - 1, -1, -1))
    best = optimal_plan(t, cost, cont)
    best_ends = list(np.cumsum([len(b.params) for b in best.buckets]))
    best_s = simulate(t, best, cost, cont).step_s
    assert best_s == pytest.approx(literal_fixed_step(profile, best_ends, cost, cont), rel=1e-12, abs=1e-15)
    order_sizes = t.layout.nbytes
    brute = min(literal_fixed_step(profile, ends, cost, cont) for ends in all_partitions(len(sizes))
                if all(order_sizes[e - 1] > 0 for e in ends[:-1]))
    assert best_s <= brute + 1e-12
    assert best_s >= brute - 1e-12


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
    t = ReadyTimeline(GradientLayout((1, 0), (1000, 1000), ("float32", "float32")), (0.001, 0.003), 0.0, 0.004,
                      0.0005)
    cost = AllreduceCostModel.linear(1e-3, 1e-6)
    split = simulate(t, BucketPlan.from_ends(t.layout, [1, 2]), cost)
    assert split.start_s == (0.001, 0.003) and np.allclose(split.end_s, (0.003, 0.005))
    assert np.isclose(split.step_s, 0.0055)
    one = simulate(t, BucketPlan.from_ends(t.layout, [2]), cost)
    assert np.isclose(one.comm_end_s, 0.006)
    # comm slowed 2x while backward runs (until 4 ms): bucket 1 (2 ms of work) does
    # 1.5 ms of work from 1 to 4 ms, the last 0.5 ms at full rate
    slow = simulate(t, BucketPlan.from_ends(t.layout, [1, 2]), cost, Contention(1.0, 2.0))
    assert np.isclose(slow.end_s[0], 0.0045)


def test_piecewise_cost_and_mixed_dtypes_respected():
    cost = AllreduceCostModel((CostSegment(0, 1e-4, 1e-8), CostSegment(1 << 20, 5e-4, 5e-9)))
    t = make_timeline([1e-3] * 6, [1 << 18] * 6, dtypes=["float32"] * 3 + ["float16"] * 3)
    plan = optimal_plan(t, cost)
    assert all(len({t.layout.dtype_of[p] for p in b.params}) == 1 for b in plan.buckets)


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


def test_search_for_2000_parameters_is_exact_and_stays_under_five_seconds():
    # a loose bound for a noisy shared CI machine: the real figure (tens of ms) is
    # benchmarks/bench_search_time.py's, not a unit test's
    t = make_timeline(list(np.full(2000, 5e-5)), [4 * 4 ** (k % 7) for k in range(2000)])
    cost = AllreduceCostModel.linear(1e-4, 2e-9)
    began = time.perf_counter()
    best = optimal_plan(t, cost, Contention(1.2, 1.5))
    elapsed = time.perf_counter() - began
    assert elapsed < 5.0
    assert best.param_order == t.layout.order
    best_s = simulate(t, best, cost, Contention(1.2, 1.5)).step_s
    assert all(best_s <= simulate(t, p, cost, Contention(1.2, 1.5)).step_s + 1e-12 for p in uniform_plans(t))


def test_candidates_for_a_mixed_dtype_model_are_all_formable_by_ddp():
    dtypes = ["float32", "float16"] * 10
    t = make_timeline([3e-4] * 20, [1 << 18] * 20, dtypes=dtypes)
    ranked = rank_candidates(t, AllreduceCostModel.linear(2e-4, 4e-9), Contention(), k=6)
    assert ranked
    for r in ranked:
        r.plan.ddp_caps_mb(t.layout)  # raises if DDP could not form it


def _profile(overlap_end_s=None, compute_span_scale=1.5, sigma=1.2, ranks=2, shuffle=False):
    """Four 10 kB gradients ready at 1..4 ms (ready order 3, 2, 1, 0), two buckets
    of two (2.1 ms of allreduce each under the model); compute steps launch both buckets at the end of backward and take
    ``compute_span_scale`` times the model's time; overlapped steps stretch backward
    by ``sigma`` and end communication at ``overlap_end_s``."""
    from gdat.core.layout import ParamInfo
    from gdat.core.profile import Profile
    from gdat.core.timeline import BucketSpan, RankTimeline, StepRecord

    cost = AllreduceCostModel.linear(1e-4, 1e-7)
    params = tuple(ParamInfo(i, f"p{i}", (2500,), "float32", 10000) for i in range(4))
    ready = tuple((p, 1e-3 * (k + 1)) for k, p in enumerate((3, 2, 1, 0)))
    steps, span = [], compute_span_scale * 2 * cost.time_s(20000)
    for s in range(3):
        buckets = (BucketSpan(0, (3, 2), 20000, 4e-3, 4e-3 + span / 2),
                   BucketSpan(1, (1, 0), 20000, 4e-3, 4e-3 + span))
        steps.append(StepRecord(s, "compute", 0.0, 0.4e-3, 0.5e-3, 4e-3, ready, buckets, step_end_s=4e-3 + span + 1e-3))
    stretched_ready = tuple((p, 0.5e-3 + sigma * (t - 0.5e-3)) for p, t in ready)
    bwd_end = 0.5e-3 + sigma * 3.5e-3
    for s in range(3, 6):
        b0 = BucketSpan(0, (3, 2), 20000, 2.5e-3, 3e-3)
        b1 = BucketSpan(1, (1, 0), 20000, bwd_end, overlap_end_s or bwd_end + 1e-3)
        buckets = (b1, b0) if shuffle else (b0, b1)
        steps.append(StepRecord(s, "overlap", 0.0, 0.4e-3, 0.5e-3, bwd_end, stretched_ready, buckets))
    rank_steps = tuple(RankTimeline(r, "h", tuple(steps)) for r in range(ranks))
    return Profile(ranks, "gloo", "cpu", "2.13.0", params, rank_steps, cost), cost


def test_measured_plan_is_what_the_overlapped_steps_ran():
    profile, _ = _profile(shuffle=True)
    plan = measured_plan(profile)
    assert [b.params for b in plan.buckets] == [(3, 2), (1, 0)]  # in bucket index order
    assert plan.bucket_bytes == (20000, 20000) and plan.label == "user configuration"
    no_overlap = replace(profile, ranks=tuple(replace(r, steps=tuple(s for s in r.steps if s.kind == "compute"))
                                              for r in profile.ranks))
    with pytest.raises(ProfileError, match="no traced overlapped step"):
        measured_plan(no_overlap)


def test_calibration_recovers_the_in_situ_cost_and_contention_it_was_built_with():
    probe, cost = _profile()
    scaled = cost.scaled(1.5, "x")
    timeline = probe.ready_timeline("compute")
    plan = measured_plan(probe)
    target = simulate(timeline, plan, scaled, Contention(1.2, 2.0)).comm_end_s
    fitted = calibrate(_profile(overlap_end_s=target)[0], cost)
    assert fitted.comm_scale == pytest.approx(1.5)
    assert fitted.cost.time_s(20000) == pytest.approx(1.5 * cost.time_s(20000))
    assert fitted.contention.compute_stretch == pytest.approx(1.2)
    assert fitted.contention.comm_slowdown == pytest.approx(2.0, rel=1e-6)
    # the fitted model replays the measured overlapped step
    assert simulate(timeline, plan, fitted.cost, fitted.contention).comm_end_s == pytest.approx(target, rel=1e-6)


def test_calibration_keeps_kappa_at_one_when_it_cannot_be_identified():
    probe, cost = _profile()
    timeline, plan = probe.ready_timeline("compute"), measured_plan(probe)
    early = simulate(timeline, plan, cost.scaled(1.5, "x"), Contention(1.2, 1.0)).comm_end_s * 0.9
    assert calibrate(_profile(overlap_end_s=early)[0], cost).contention.comm_slowdown == 1.0
    late = simulate(timeline, plan, cost.scaled(1.5, "x"), Contention(1.2, 3.0)).comm_end_s * 1.5
    assert calibrate(_profile(overlap_end_s=late)[0], cost).contention.comm_slowdown == 1.0


def test_in_situ_scale_is_clamped():
    _, cost = _profile()
    assert calibrate(_profile(compute_span_scale=5.0)[0], cost).comm_scale == 2.0
    assert calibrate(_profile(compute_span_scale=0.1)[0], cost).comm_scale == 0.5


def test_generated_candidates_include_a_stored_plan_once_and_never_the_baseline_twice():
    from gdat.schedule.candidates import generate_candidates

    profile, cost = _profile()
    found = generate_candidates(profile, cost, 3)
    assert found.baseline_plan.label == "user configuration"
    assert all(not r.plan.same_partition(found.baseline_plan) for r in found.ranked)
    # a stored verdict of the user's configuration is measured anyway, as the baseline: not again
    again = generate_candidates(profile, cost, 3, found.baseline_plan)
    assert [r.plan for r in again.ranked] == [r.plan for r in found.ranked]
    ends = next(e for e in all_partitions(4)
                if not any(BucketPlan.from_ends(found.timeline.layout, e).same_partition(p)
                           for p in [found.baseline_plan, *(r.plan for r in found.ranked)]))
    stored = BucketPlan.from_ends(found.timeline.layout, ends, "a stored plan")
    again = generate_candidates(profile, cost, 3, stored)
    assert [r.plan.label for r in again.ranked][-1] == "stored"
    assert again.ranked[-1].plan.same_buckets(stored)
    assert len(again.ranked) == min(3, len(found.ranked) + 1)
    ranked_already = generate_candidates(profile, cost, 3, found.ranked[0].plan)
    assert [r.plan for r in ranked_already.ranked] == [r.plan for r in found.ranked]


def test_later_rounds_admit_no_plan_when_the_search_ranked_none():
    from gdat.decide.rounds import RoundPlanner
    from gdat.decide.verdict import BASELINE, Block
    from gdat.decide.windows import WindowStats
    from gdat.schedule.candidates import generate_candidates

    profile, cost = _profile()
    found = generate_candidates(profile, cost, 3)
    measured = [Block(BASELINE, 1, WindowStats((0.008, 0.008, 0.008)))]
    plan, added, _ = RoundPlanner(found, [], list(measured)).next_block(6)
    assert plan == 0 and added, "the corrected model admits plans when the search ranked some"
    nothing = replace(found, ranked=())
    assert RoundPlanner(nothing, [], list(measured)).next_block(6) == (None, [], 1)


def test_plans_are_told_apart_by_their_partition():
    a = BucketPlan.from_ends(make_timeline([1e-3] * 4, [4] * 4).layout, [2, 4])
    shuffled = BucketPlan(tuple(replace(b, params=b.params[::-1]) for b in a.buckets[::-1]), "same groups")
    assert shuffled.same_partition(a) and not shuffled.same_buckets(a)
    assert not BucketPlan.from_ends(make_timeline([1e-3] * 4, [4] * 4).layout, [1, 4]).same_partition(a)


def test_the_correction_recovers_a_per_allreduce_overhead_and_moves_the_next_candidates():
    from gdat.schedule.candidates import Correction, admissible, fit_correction, generate_candidates

    profile, cost = _profile()
    found = generate_candidates(profile, cost, 3)
    truth = Correction(2e-4, 3e-3)  # 0.2 ms per allreduce the model did not charge, 3 ms for every plan
    plans = [found.baseline_plan, *(r.plan for r in found.ranked)]
    assert len({len(p.buckets) for p in plans}) >= 2
    fitted = fit_correction(found, [(p, truth.predict_s(found, p)) for p in plans])
    assert fitted.extra_alpha_s == pytest.approx(2e-4, rel=0.1)
    assert fitted.offset_s == pytest.approx(3e-3, abs=1e-4)
    for p in plans:
        assert fitted.predict_s(found, p) == pytest.approx(truth.predict_s(found, p), rel=0.01)
    # one bucket count only: the overhead cannot be told from the offset
    assert fit_correction(found, [(found.baseline_plan, 0.05)]).extra_alpha_s == 0.0
    # under a large overhead the next candidates are the corrected model's best, never a measured plan
    heavy = Correction(5e-3)
    nxt = admissible(found, heavy, [found.baseline_plan], 8, float("inf"))
    assert nxt and not any(r.plan.same_partition(found.baseline_plan) for r in nxt)
    assert len(nxt[0].plan.buckets) == 1
    assert nxt[0].sim == found.simulate(nxt[0].plan)  # reported with the uncorrected model
    assert admissible(found, heavy, [found.baseline_plan], 8, 0.0) == []


def test_plans_the_model_cannot_tell_apart_are_measured_once():
    from gdat.schedule.candidates import RankedPlan, _diverse

    t = make_timeline([1e-3] * 4, [4000] * 4)
    cost = AllreduceCostModel.linear(1e-4, 1e-8)

    def ranked(ends, step_s):
        plan = BucketPlan.from_ends(t.layout, ends, str(ends))
        return RankedPlan(plan, replace(simulate(t, plan, cost), step_s=step_s))

    a, twin, other = ranked([2, 4], 0.1), ranked([1, 4], 0.10005), ranked([1, 2, 4], 0.1005)
    assert [r.plan.label for r in _diverse([a, twin, other], 3)] == ["[2, 4]", "[1, 2, 4]"]
