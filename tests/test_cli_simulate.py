"""``gdat simulate``: plans and predictions from a profile, what-if at scale, saved plans."""
from __future__ import annotations

import math

import pytest

from gdat.cost_model import AllreduceCostModel
from gdat.plan import BucketPlan
from gdat.schedule.whatif import scaled_cost
from gdat.timeline import BucketSpan, ParamInfo, Profile, RankTimeline, StepRecord
from tests.helpers import run_cmd

N = 24


def synthetic_profile() -> Profile:
    params = tuple(ParamInfo(i, f"p{i}", (1024, 256), "float32", 1 << 20) for i in range(N))
    order = list(range(N - 1, -1, -1))
    ranks = []
    for r in range(2):
        steps = []
        for k, kind in enumerate(["compute"] * 3 + ["overlap"] * 3):
            ready = tuple((p, 0.010 + 0.002 * j + 0.0001 * r) for j, p in enumerate(order))
            spans = (BucketSpan(0, tuple(order[:12]), 12 << 20, 0.034, 0.090),
                     BucketSpan(1, tuple(order[12:]), 12 << 20, 0.058 if kind == "overlap" else 0.060, 0.150))
            steps.append(StepRecord(k, kind, float(k), 0.008, 0.009, 0.060, ready, spans,
                                    0.151, 0.153, 0.155))
        ranks.append(RankTimeline(r, "host", tuple(steps)))
    return Profile(2, "gloo", "cpu", "2.13.0", params, tuple(ranks),
                   AllreduceCostModel.linear(1e-4, 4e-9, "test"))


@pytest.fixture()
def profile_path(tmp_path):
    path = tmp_path / "profile.json"
    synthetic_profile().save(str(path))
    return path


def test_simulate_prints_plans_sorted_with_the_lower_bound(profile_path):
    done = run_cmd(["gdat", "simulate", str(profile_path)])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "measured: 2 ranks"
    rows = [line for line in lines[3:] if not line.startswith("lower bound")]
    steps = [float(line.split()[-3]) for line in rows]
    assert steps == sorted(steps) and rows[0].startswith("optimal")
    bound = float(lines[-1].split()[-1])
    assert bound <= steps[0]


def test_what_if_at_64_ranks_and_saved_plan(profile_path, tmp_path):
    saved = tmp_path / "plan.json"
    done = run_cmd(["gdat", "simulate", str(profile_path), "--world-size", "64", "--bandwidth", "100gbit",
                    "--algo", "tree", "--max-buckets", "8", "--save-plan", str(saved)])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("what-if: 64 ranks, tree, 100 Gbit/s per rank")
    plan = BucketPlan.load(str(saved))
    assert len(plan.buckets) <= 8 and sorted(plan.param_order) == list(range(N))


@pytest.mark.parametrize("args, message", [
    (["--algo", "mesh"], "--algo must be ring or tree"),
    (["--bandwidth", "fast"], "invalid rate 'fast'"),
    (["--world-size", "1"], "world sizes of at least 2"),
    (["--max-buckets", "0"], "--max-buckets must be at least 1"),
])
def test_simulate_bad_options(profile_path, args, message):
    done = run_cmd(["gdat", "simulate", str(profile_path), *args])
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_alpha_beta_scaling_formulas():
    measured = AllreduceCostModel.linear(2e-4, 8e-9)  # at p0 = 2: hop latency 1e-4, link 8e-9 s/B
    ring = scaled_cost(measured, 2, 64, "ring")
    assert ring.alpha_s == pytest.approx(2 * 63 * 1e-4)
    assert ring.beta_s_per_byte == pytest.approx(2 * 63 / 64 * 8e-9)
    tree = scaled_cost(measured, 2, 64, "tree", bandwidth_bytes_per_s=1.25e10)
    assert tree.alpha_s == pytest.approx(2 * math.ceil(math.log2(64)) * 1e-4)
    assert tree.beta_s_per_byte == pytest.approx(2 / 1.25e10)
