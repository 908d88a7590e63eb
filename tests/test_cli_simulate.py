"""``gdat simulate``: plans and predictions from a profile, what-if networks and scale, saved plans."""
from __future__ import annotations

import dataclasses
import math

import pytest

from gdat.cli import main as gdat_main
from gdat.core.cost_model import AllreduceCostModel, CastCost, CostSegment
from gdat.core.layout import ParamInfo
from gdat.core.plan import BucketPlan
from gdat.core.profile import Profile
from gdat.core.timeline import BucketSpan, RankTimeline, StepRecord
from gdat.schedule.baselines import uniform_plan
from gdat.schedule.search import optimal_plan
from gdat.schedule.simulator import simulate
from gdat.schedule.whatif import Network, hops, link_beta, queue_loads, whatif_cost, whatif_model, wire_factor

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


def _simulate(capsys, *args):
    """``gdat simulate`` in-process: (status, stdout, stderr)."""
    code = gdat_main(["simulate", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_simulate_prints_plans_sorted_with_the_lower_bound(profile_path, capsys):
    code, out, err = _simulate(capsys, profile_path)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "measured: 1 node x 2 ranks, intra-node shared, as measured; the allreduce as calibrated there"
    rows = [line for line in lines[3:] if not line.startswith("lower bound")]
    steps = [float(line.split()[-3]) for line in rows]
    assert steps == sorted(steps) and any(row.startswith("optimal ") for row in rows)
    # gloo: two allreduces share the link, and the search's optimum is exact one at a time
    assert "2 allreduces at once sharing the link" in lines[1] and "copy-back" in lines[1]
    bound = float(lines[-1].split()[-1])
    assert bound <= steps[0]


def test_what_if_at_64_ranks_and_saved_plan(profile_path, tmp_path, capsys):
    saved = tmp_path / "plan.json"
    code, out, err = _simulate(capsys, profile_path, "--world-size", "64", "--bandwidth", "100gbit",
                               "--algo", "tree", "--max-buckets", "8", "--save-plan", saved)
    assert code == 0, err
    assert out.startswith("what-if: tree: 64 nodes x 1 rank, inter-node 100 Gbit/s each way")
    plan = BucketPlan.load(str(saved))
    assert len(plan.buckets) <= 8 and sorted(plan.param_order) == list(range(N))


def test_slower_link_predicts_slower_steps_and_the_sweep_plots(profile_path, tmp_path, capsys):
    def step_of_optimum(*args):
        code, out, err = _simulate(capsys, profile_path, *args)
        assert code == 0, err
        return float(next(l for l in out.splitlines() if l.startswith("optimal")).split()[-3])

    # the synthetic profile's link: 4 ns/B on one node of 2 ranks = a shared 4 Gbit/s queue
    same = step_of_optimum("--intra-node-bandwidth", "4gbit", "--measured-intra-node-bandwidth", "4gbit")
    assert same == pytest.approx(step_of_optimum(), rel=1e-3)
    assert step_of_optimum("--intra-node-bandwidth", "1gbit", "--measured-intra-node-bandwidth", "4gbit") > same
    png = tmp_path / "sweep.png"
    code, out, err = _simulate(capsys, profile_path, "--sweep", "2,16,1024", "--bandwidth", "10gbit", "--plot", png)
    assert code == 0, err
    rows = [l.split() for l in out.splitlines()[2:5]]
    assert [int(r[0]) for r in rows] == [2, 16, 1024]
    assert float(rows[-1][1]) > float(rows[0][1])  # ring latency grows with the ranks
    assert png.stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["--algo", "mesh"], "--algo must be ring or tree"),
    (["--bandwidth", "fast"], "invalid rate 'fast'"),
    (["--world-size", "1"], "world sizes of at least 2"),
    (["--world-size", "0"], "world sizes of at least 2"),
    (["--max-buckets", "0"], "--max-buckets must be at least 1"),
    (["--world-size", "6", "--ranks-per-node", "4"], "not a multiple of 4"),
    (["--sweep", "2,x"], "--sweep must be world sizes"),
    (["--plot", "x.png"], "--plot needs --sweep"),
    (["--core-sharing", "0"], "--core-sharing must be a positive number"),
    # an option that would not act on the prediction names the one that would
    (["--bandwidth", "1gbit"], "--bandwidth sets the links between nodes, and the target (1 node x 2 ranks) has "
                               "one node: --intra-node-bandwidth"),
    (["--mtu", "9000", "--intra-node-bandwidth", "1gbit"], "--mtu sets the links between nodes"),
    (["--nodes", "2", "--ranks-per-node", "1", "--intra-node-bandwidth", "1gbit"],
     "has one rank per node: --bandwidth sets each node's link"),
    (["--measured-inter-node-bandwidth", "1gbit", "--nodes", "2"],
     "the profile ran on one node, which has no inter-node link; --measured-intra-node-bandwidth"),
    (["--measured-intra-node-bandwidth", "2gbit"], "acts only on a what-if prediction"),
    (["--sweep", "2,4", "--world-size", "4"], "--world-size: --sweep sets the world size"),
    (["--sweep", "2,4", "--save-plan", "p.json"], "--save-plan acts on the table of plans"),
    (["--sweep", "2,4", "--intra-node-bandwidth", "1gbit"], "has one rank per node"),
])
def test_simulate_bad_options(profile_path, capsys, args, message):
    code, _, err = _simulate(capsys, profile_path, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_wire_factor_counts_ethernet_ip_and_tcp_headers():
    assert wire_factor(1500) == pytest.approx(1514 / 1448)
    assert wire_factor(65536) == pytest.approx(1.001, abs=1e-3)


def test_queue_loads_of_ring_and_tree():
    one_node = Network(1, 2, intra_bytes_per_s=2.5e8)
    assert queue_loads(one_node, "ring") == {"intra": 2.0}  # two ring edges share the loopback
    assert link_beta(one_node, "ring") == pytest.approx(2 * wire_factor(65536) / 2.5e8)
    two_nodes = Network(2, 1, inter_bytes_per_s=1.25e8)
    assert queue_loads(two_nodes, "ring") == {"intra": 0.0, "inter": 1.0}
    assert link_beta(two_nodes, "ring") == pytest.approx(wire_factor(1500) / 1.25e8)
    big = Network(128, 8, 1.25e10, 1e11)
    assert queue_loads(big, "ring")["inter"] == pytest.approx(2 * 1023 / 1024)
    assert queue_loads(big, "ring")["intra"] == pytest.approx(7 * 2 * 1023 / 1024)
    assert queue_loads(big, "tree") == {"intra": 14.0, "inter": 2.0}
    assert hops(big, "ring") == 2 * 1023 and hops(big, "tree") == 2 * (7 + 7)


def test_what_if_carries_the_measured_efficiency_and_hop_latency():
    measured = Network(1, 2, intra_bytes_per_s=2.5e8)
    nominal = link_beta(measured, "ring")
    cost = AllreduceCostModel.linear(2e-4, 1.05 * nominal)  # in situ 5% slower than the link
    slower = whatif_cost(cost, measured, Network(1, 2, intra_bytes_per_s=1.25e8))
    assert slower.beta_s_per_byte == pytest.approx(2 * 1.05 * nominal)
    assert slower.alpha_s == pytest.approx(2e-4)
    nodes = whatif_cost(cost, measured, Network(2, 1, inter_bytes_per_s=1.25e8))
    assert nodes.beta_s_per_byte == pytest.approx(1.05 * wire_factor(1500) / 1.25e8)
    wide = whatif_cost(cost, measured, Network(64, 1, inter_bytes_per_s=1.25e10), "tree")
    assert wide.alpha_s == pytest.approx(1e-4 * 2 * math.ceil(math.log2(64)))
    assert wide.beta_s_per_byte == pytest.approx(1.05 * 2 * wire_factor(1500) / 1.25e10)


def test_a_small_message_segment_moves_with_a_rate_change_but_not_to_another_layout():
    """Two segments (small messages 40% cheaper per byte, as a token bucket's burst
    makes them): halving the rate keeps the shape; more ranks per node prices every
    segment at the large messages' per-byte cost, each keeping its latency."""
    measured = Network(2, 1, inter_bytes_per_s=1.25e8, intra_bytes_per_s=5e8)
    cost = AllreduceCostModel((CostSegment(0, 1e-4, 6e-9), CostSegment(2 << 20, 2e-4, 1e-8)), "ladder")
    slower = whatif_cost(cost, measured, dataclasses.replace(measured, inter_bytes_per_s=6.25e7))
    assert [s.beta_s_per_byte for s in slower.segments] == pytest.approx([1.2e-8, 2e-8])
    wider = whatif_cost(cost, measured, dataclasses.replace(measured, ranks_per_node=2))
    betas = [s.beta_s_per_byte for s in wider.segments]
    assert betas[0] == pytest.approx(betas[1]) and betas[1] == pytest.approx(wider.beta_s_per_byte)
    assert [s.alpha_s for s in wider.segments] == pytest.approx([1e-4 * 6 / 2, 2e-4 * 6 / 2])
    dear = AllreduceCostModel((CostSegment(0, 1e-4, 1.2e-8), CostSegment(2 << 20, 2e-4, 1e-8)), "ladder")
    kept = whatif_cost(dear, measured, dataclasses.replace(measured, ranks_per_node=2)).segments
    assert kept[0].beta_s_per_byte / kept[1].beta_s_per_byte == pytest.approx(1.2)  # never made cheaper


def test_unknown_measured_rate_is_recovered_from_beta():
    cost = AllreduceCostModel.linear(2e-4, 8e-9)
    same = whatif_cost(cost, Network(1, 2), Network(1, 2))
    assert same.beta_s_per_byte == pytest.approx(8e-9)
    # the rank's share of the recovered loopback rate becomes the inter-node rate
    spread = whatif_cost(cost, Network(1, 2), Network(2, 1))
    assert spread.beta_s_per_byte == pytest.approx(8e-9 * wire_factor(1500) / wire_factor(65536))


def test_compressed_plans_are_shown_beside_exact_ones(tmp_path, capsys):
    slow = synthetic_profile()
    slow = Profile(slow.world_size, slow.backend, slow.device_type, slow.torch_version, slow.params, slow.ranks,
                   AllreduceCostModel.linear(1e-4, 4e-9, "test").with_cast(CastCost("bf16", 0.0, 1e-11)))
    path = tmp_path / "p.json"
    slow.save(str(path))
    code, out, err = _simulate(capsys, path)
    assert code == 0, err
    assert "bf16 cast" in out.splitlines()[1]
    rows = {line.split()[0]: float(line.split()[-3]) for line in out.splitlines()[3:-1]}
    assert rows["optimal+bf16"] < rows["optimal"]
    synthetic_profile().save(str(path))
    code, out, _ = _simulate(capsys, path)
    assert code == 0 and "no cast cost" in out and "optimal+bf16" not in out


def test_a_what_if_that_changes_nothing_predicts_what_the_measured_model_predicts(tmp_path, capsys):
    """One lower bound and one table for one profile at one rate, with or without a
    what-if option, also for a piecewise allreduce model (the shape moves segment by
    segment)."""
    base = synthetic_profile()
    piecewise = AllreduceCostModel((CostSegment(0, 3e-4, 4e-9), CostSegment(1 << 18, 1e-5, 8e-9)))
    for cost in (base.cost_model, piecewise):
        path = tmp_path / "p.json"
        Profile(base.world_size, base.backend, base.device_type, base.torch_version, base.params, base.ranks,
                cost).save(str(path))
        code, measured, err = _simulate(capsys, path)
        assert code == 0, err
        code, same, err = _simulate(capsys, path, "--ranks-per-node", "2", "--nodes", "1")
        assert code == 0, err
        assert same.splitlines()[0].startswith("what-if: ")
        assert same.splitlines()[2:] == measured.splitlines()[2:]


def test_core_sharing_multiplies_every_compute_time_and_the_overlapped_slowdown(capsys, profile_path):
    """Ranks with half the processor time (four single-threaded ranks on the two cores
    two had): the compute timeline and kappa double, the allreduce cost and sigma
    stay, and a step that was compute-bound doubles."""
    profile = synthetic_profile()
    same, doubled = (whatif_model(profile, Network(1, 2), Network(1, 2), core_sharing=s) for s in (1.0, 2.0))
    assert doubled.timeline.ready_s == tuple(2 * t for t in same.timeline.ready_s)
    assert (doubled.timeline.backward_start_s, doubled.timeline.backward_end_s, doubled.timeline.post_s) == \
        tuple(2 * t for t in (same.timeline.backward_start_s, same.timeline.backward_end_s, same.timeline.post_s))
    assert doubled.cost == same.cost
    assert doubled.contention.compute_stretch == same.contention.compute_stretch
    assert doubled.contention.comm_slowdown == 2 * same.contention.comm_slowdown
    plans = [optimal_plan(same.timeline, same.cost, same.contention),
             uniform_plan(same.timeline, 25, first_bucket=True)]
    for plan in plans:
        t1 = simulate(same.timeline, plan, same.cost, same.contention)
        t2 = simulate(doubled.timeline, plan, doubled.cost, doubled.contention)
        assert t1.step_s < t2.step_s < 2 * t1.step_s  # the allreduces do not double
        # with a link too fast to matter the step is compute alone, and doubles
        fast = same.cost.scaled(1e-6, "fast")
        assert simulate(doubled.timeline, plan, fast, doubled.contention).step_s == pytest.approx(
            2 * simulate(same.timeline, plan, fast, same.contention).step_s, rel=1e-3)
    code, out, err = _simulate(capsys, profile_path, "--core-sharing", "2")
    assert code == 0, err
    assert out.splitlines()[0].startswith("what-if: ") and "cores shared x2" in out.splitlines()[0]
