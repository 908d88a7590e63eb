"""The sequential test, its evidence across launches, the verdict it gives a launch,
a plan on trial's confirmation, and the drift watch (in-process, on block data)."""
from __future__ import annotations

import math
import random

import pytest

from gdat.core.plan import Bucket, BucketPlan
from gdat.decide.confirm import confirm_trial, kept, probe_observation, runs, steady_state_check
from gdat.decide.drift import DriftWatch
from gdat.decide.judge import judge
from gdat.decide.sequential import ALPHA, BETA, Evidence, Observation, PlanEvidence, observe, weigh
from gdat.decide.verdict import BASELINE, paired_differences
from gdat.decide.windows import WindowStats
from tests.test_decide import blocks_of, window_ms

USER = BucketPlan((Bucket((0, 1), 8, "float32"), Bucket((2, 3), 8, "float32")), "user configuration")
SPLIT = BucketPlan((Bucket((0,), 4, "float32"), Bucket((1,), 4, "float32"), Bucket((2, 3), 8, "float32")), "split")
ONE = BucketPlan((Bucket((0, 1, 2, 3), 16, "float32"),), "one")


def _evidence(diffs_ms, sd_ms=4.0, plan=SPLIT, baseline_ms=100.0):
    obs = tuple(Observation(d / 1e3, (sd_ms / 1e3) ** 2, 3, 0) for d in diffs_ms)
    return Evidence(USER.to_dict(), baseline_ms / 1e3, (PlanEvidence(plan.to_dict(), obs),), 1)


def test_the_bounds_follow_walds_formulas_with_one_share_of_alpha_per_candidate():
    j = weigh(_evidence([-10.0]))
    assert j.upper == pytest.approx(math.log((1 - BETA) / ALPHA))
    assert j.lower == pytest.approx(math.log(BETA / (1 - ALPHA)))
    assert j.delta_s == pytest.approx(0.003)  # 3% of a 100 ms step
    two = Evidence(USER.to_dict(), 0.1, (*_evidence([-10.0]).plans, PlanEvidence(ONE.to_dict(), ())), 1)
    assert weigh(two).upper == pytest.approx(math.log((1 - BETA) / (ALPHA / 2)))
    # LLR = sum -Delta (d + Delta/2) / v
    assert j.llr[0] == pytest.approx(-0.003 * (-0.010 + 0.0015) / 0.004 ** 2)


def test_a_clear_gain_is_adopted_no_gain_is_rejected_and_a_small_one_is_inconclusive():
    assert weigh(_evidence([-10.0] * 3)).adopted == 0  # 10% faster with 4% noise: three blocks suffice
    assert weigh(_evidence([-10.0])).confident is False
    nothing = weigh(_evidence([0.0] * 10))
    assert nothing.confident and nothing.adopted is None and nothing.status == ("reject",)
    small = weigh(_evidence([-1.5] * 3))
    assert not small.confident and small.leader == 0


def test_evidence_pools_launches_by_partition_and_starts_afresh_for_another_user_configuration():
    first = observe(None, USER.to_dict(), 0.1, [(SPLIT.to_dict(), [(-0.01, 1e-5, 3)])])
    assert first.launches == 1 and first.blocks == 1
    relabelled = BucketPlan(SPLIT.buckets, "stored")
    second = observe(first, USER.to_dict(), 0.1, [(relabelled.to_dict(), [(-0.012, 1e-5, 3)]),
                                                   (ONE.to_dict(), [(0.0, 1e-5, 3)])])
    assert second.launches == 2 and len(second.plans) == 2 and len(second.plans[0].observations) == 2
    assert [o.launch for o in second.plans[0].observations] == [0, 1]
    assert Evidence.from_dict(second.to_dict()) == second
    other = observe(second, SPLIT.to_dict(), 0.1, [(ONE.to_dict(), [(0.0, 1e-5, 3)])])
    assert other.launches == 1 and other.blocks == 1


def test_a_launch_is_adopted_rejected_or_left_inconclusive_by_the_pooled_evidence():
    clear = blocks_of([BASELINE, 0, 1, 0, BASELINE], lambda j, k, p: {BASELINE: 100, 0: 85, 1: 100}[p] + (-1, 0, 1)[k])
    verdict, evidence, j = judge(clear, [SPLIT, ONE], USER, [], None)
    assert verdict.winner == 0 and verdict.confident and not verdict.trial and "adopted" in verdict.reason
    assert evidence.launches == 1 and evidence.blocks == 3
    wide = (-6.0, 0.0, 6.0)
    close = blocks_of([BASELINE, 0, 1, 0, BASELINE], lambda j, k, p: {BASELINE: 100, 0: 92, 1: 100}[p] + wide[k])
    verdict, evidence, j = judge(close, [SPLIT, ONE], USER, [], None)
    assert verdict.trial and verdict.winner == 0 and not verdict.confident and "runs while measuring" in verdict.reason
    # the next launch pools the same blocks again: the lead grows certain
    for _ in range(8):
        verdict, evidence, j = judge(close, [SPLIT, ONE], USER, [], evidence)
        if verdict.confident:
            break
    assert verdict.confident and verdict.winner == 0 and evidence.launches > 1
    flat = blocks_of([BASELINE, 0, 1, 0, 1, BASELINE], lambda j, k, p: 100 + (-1, 0, 1)[k])
    verdict, _, _ = judge(flat, [SPLIT, ONE], USER, [], None)
    for _ in range(5):
        if verdict.confident:
            break
        verdict, _, _ = judge(flat, [SPLIT, ONE], USER, [], _)
    assert verdict.confident and verdict.winner is None and "nothing beats" in verdict.reason


def test_a_plan_on_trial_is_adopted_rejected_or_runs_on_by_its_steady_state_window():
    wide = (-3.0, 0.0, 3.0)
    blocks = blocks_of([BASELINE, 0, 1, 0, BASELINE], lambda j, k, p: {BASELINE: 100, 0: 92, 1: 100}[p] + wide[k])
    verdict, evidence, _ = judge(blocks, [SPLIT, ONE], USER, [], None)
    assert verdict.trial and kept(verdict, None) is None and runs(verdict, None) == 0
    after = window_ms(*(100 + x for x in wide))
    fast = steady_state_check(blocks, WindowStats(tuple((88 + x) / 1e3 for x in (-1, 0, 1, -1, 1, 0))), after, 0.6)
    check, grown = confirm_trial(fast, evidence, SPLIT.to_dict(), 0)
    assert check.outcome == "holds" and kept(verdict, check) == 0 and grown.blocks == evidence.blocks + 1
    slow = steady_state_check(blocks, WindowStats(tuple((118 + x) / 1e3 for x in (-1, 0, 1, -1, 1, 0))), after, 0.6)
    check, _ = confirm_trial(slow, evidence, SPLIT.to_dict(), 0)
    # no single window can reject it (differences are clipped at 3 sd), but one slower beyond the noise
    # sends it back
    assert check.trial_status == "regressed" and check.outcome == "switched back"
    slight = blocks_of([BASELINE, 0, 1, 0, BASELINE], lambda j, k, p: {BASELINE: 100, 0: 97, 1: 100}[p] + wide[k])
    verdict, evidence, _ = judge(slight, [SPLIT, ONE], USER, [], None)
    check, _ = confirm_trial(slow, evidence, SPLIT.to_dict(), 0)
    assert verdict.trial and check.outcome == "switched back" and runs(verdict, check) is None
    level = steady_state_check(blocks, WindowStats(tuple((99 + x) / 1e3 for x in wide * 2)), after, 0.6)
    check, _ = confirm_trial(level, evidence, SPLIT.to_dict(), 0)
    assert check.outcome == "continues" and runs(verdict, check) == 0 and kept(verdict, check) is None


def test_the_false_adoption_rate_on_a_and_a_blocks_stays_under_five_percent():
    """The same configuration measured as two candidates, launch after launch, with
    the step noise of this machine's jobs (4% of the step per step, and a drift the
    paired blocks cancel): the test adopts one of them in under 5% of campaigns."""
    rng = random.Random(7)
    adopted = campaigns = 0
    for _ in range(300):
        campaigns += 1
        evidence = None
        for launch in range(6):
            drift = rng.uniform(-5, 5)
            blocks = blocks_of([BASELINE, 0, 1, BASELINE, 1, 0, BASELINE],
                               lambda j, k, p: 100 + drift * j + rng.gauss(0, 4))
            verdict, evidence, j = judge(blocks, [SPLIT, ONE], USER, [], evidence)
            if verdict.confident:
                adopted += verdict.winner is not None
                break
    assert adopted / campaigns <= 0.05, adopted


def test_a_sustained_departure_is_drift_and_a_spike_is_not():
    watch = DriftWatch(window_ms(*([100.0] * 10)))
    assert not watch.observe(window_ms(*([100.5] * 10)))
    assert not watch.observe(window_ms(*([140.0] * 10)))  # one window
    assert not watch.observe(window_ms(*([100.0] * 10)))
    assert not watch.observe(window_ms(*([140.0] * 10)))
    assert watch.observe(window_ms(*([141.0] * 10)))  # two in a row, the same way
    watch.rebase(window_ms(*([141.0] * 10)))
    assert not watch.observe(window_ms(*([142.0] * 10)))
    assert not watch.observe(window_ms(*([100.0] * 10))) and watch.observe(window_ms(*([100.0] * 10)))


def test_paired_differences_carry_each_blocks_variance_and_steps():
    blocks = blocks_of([BASELINE, 0, BASELINE], lambda j, k, p: (100 if p == BASELINE else 90) + (-1, 0, 1)[k])
    [(d, v, n)] = paired_differences(blocks)[0]
    assert d == pytest.approx(-0.010) and v > 0 and n == 3


def test_a_probe_pairs_the_configuration_believed_slower_with_the_running_one_around_it():
    before, after = window_ms(100, 101, 99), window_ms(102, 103, 101)
    probed = probe_observation(before, window_ms(95, 96, 94), after, [], plan_runs=False, launch=2)
    assert probed.diff_s == pytest.approx(-0.006) and probed.launch == 2 and probed.steps == 3 and probed.var_s2 > 0
    user = probe_observation(before, window_ms(110, 111, 109), after, [], plan_runs=True, launch=2)
    assert user.diff_s == pytest.approx(-0.009)  # the running plan is 9 ms faster than the user's configuration
