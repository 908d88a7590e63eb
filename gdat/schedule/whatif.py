"""What-if at scale: re-predict plans for another world size, link and algorithm.

Standard alpha-beta formulas for an allreduce of ``n`` bytes over ``p`` ranks, with
per-message latency ``a`` (seconds) and per-rank link bandwidth ``b`` (bytes/s):

* ring (reduce-scatter + all-gather): ``t = 2 (p-1) a + 2 (p-1)/p * n / b``
* tree (pipelined binary-tree reduce + broadcast):
  ``t = 2 ceil(log2 p) a + 2 n / b``

From a profile measured on ``p0`` ranks the per-message latency is recovered by
inverting the same formula on the measured ``alpha`` (``a = alpha / (2 (p0-1))`` for
ring, ``alpha / (2 ceil(log2 p0))`` for tree); the bandwidth is the one given, or
recovered likewise from the measured ``beta``.  Backward compute per rank is taken
as measured (data parallelism keeps the per-rank batch).
"""
from __future__ import annotations

import argparse
import math

from gdat.cost_model import AllreduceCostModel
from gdat.errors import UsageError
from gdat.plan import BucketPlan
from gdat.schedule.baselines import mgwfbp_plan, uniform_plans
from gdat.schedule.search import optimal_plan
from gdat.schedule.simulator import calibrate, lower_bound_s, simulate
from gdat.timeline import Profile

__all__ = ["scaled_cost", "add_simulate_arguments", "simulate_command", "ALGOS"]

ALGOS = ("ring", "tree")


def _latency_factor(algo: str, p: int) -> float:
    return 2.0 * (p - 1) if algo == "ring" else 2.0 * math.ceil(math.log2(p))


def _bandwidth_factor(algo: str, p: int) -> float:
    return 2.0 * (p - 1) / p if algo == "ring" else 2.0


def scaled_cost(
    measured: AllreduceCostModel, measured_world: int, world: int, algo: str,
    bandwidth_bytes_per_s: float | None = None,
) -> AllreduceCostModel:
    """The linear cost model for ``world`` ranks (module docstring)."""
    if algo not in ALGOS:
        raise UsageError(f"--algo must be ring or tree, got {algo!r}")
    if world < 2 or measured_world < 2:
        raise UsageError("what-if needs world sizes of at least 2")
    hop = measured.alpha_s / _latency_factor(algo, measured_world)
    if bandwidth_bytes_per_s is None:
        per_byte = measured.beta_s_per_byte / _bandwidth_factor(algo, measured_world)
    else:
        per_byte = 1.0 / bandwidth_bytes_per_s
    return AllreduceCostModel.linear(hop * _latency_factor(algo, world),
                                     per_byte * _bandwidth_factor(algo, world),
                                     source=f"what-if {algo} p={world}")


def _parse_bandwidth(raw: str) -> float:
    from launch.testbed import parse_rate

    return parse_rate(raw)


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profile", help="profile JSON written by gdat profile / gdat-run")
    parser.add_argument("--world-size", type=int, default=None, help="predict for this many ranks")
    parser.add_argument("--bandwidth", default=None,
                        help="per-rank link bandwidth in tc units (e.g. 100gbit, 25gbps)")
    parser.add_argument("--algo", default="ring", help="allreduce algorithm: ring or tree (default ring)")
    parser.add_argument("--max-buckets", type=int, default=None, help="limit the optimum's bucket count (AOE: 8)")
    parser.add_argument("--top", type=int, default=12, help="rows to print (default 12)")
    parser.add_argument("--save-plan", default=None, metavar="PATH",
                        help="save the optimal plan (for gdat-run --gdat-plan PATH)")


def simulate_command(args: argparse.Namespace) -> str:
    """The table ``gdat simulate`` prints."""
    profile = Profile.load(args.profile)
    timeline = profile.ready_timeline("compute")
    if profile.cost_model is None:
        raise UsageError(f"{args.profile}: the profile has no allreduce cost model")
    if args.max_buckets is not None and args.max_buckets < 1:
        raise UsageError("--max-buckets must be at least 1")
    if args.top < 1:
        raise UsageError("--top must be at least 1")
    fitted = calibrate(profile, profile.cost_model)
    cost, contention = fitted.cost, fitted.contention
    scope = f"measured: {profile.world_size} ranks"
    if args.world_size is not None or args.bandwidth is not None or args.algo != "ring":
        world = args.world_size or profile.world_size
        bandwidth = _parse_bandwidth(args.bandwidth) if args.bandwidth else None
        cost = scaled_cost(cost, profile.world_size, world, args.algo, bandwidth)
        scope = f"what-if: {world} ranks, {args.algo}, " + (
            f"{bandwidth * 8 / 1e9:g} Gbit/s per rank" if bandwidth else "measured bandwidth")
    plans: list[BucketPlan] = [optimal_plan(timeline, cost, contention, args.max_buckets)]
    plans += [*uniform_plans(timeline), mgwfbp_plan(timeline, cost, contention)]
    rows = sorted(((simulate(timeline, p, cost, contention), p) for p in plans), key=lambda r: r[0].step_s)
    bound = lower_bound_s(timeline, cost, contention)
    lines = [scope,
             f"allreduce t = {cost.alpha_s * 1e6:.1f} us + {cost.beta_s_per_byte * 1e9:.4f} ns/B; "
             f"contention sigma={contention.compute_stretch:.2f} kappa={contention.comm_slowdown:.2f}",
             f"{'plan':<28}{'buckets':>8}{'step ms':>10}{'exposed ms':>12}{'vs bound':>10}"]
    for sim, plan in rows[: args.top]:
        lines.append(f"{plan.label:<28}{len(plan.buckets):>8}{sim.step_s * 1e3:>10.2f}"
                     f"{sim.exposed_comm_s * 1e3:>12.2f}{sim.step_s / bound:>10.3f}")
    lines.append(f"{'lower bound (any plan)':<28}{'':>8}{bound * 1e3:>10.2f}")
    if args.save_plan:
        plans[0].save(args.save_plan)
        lines.append(f"optimal plan saved to {args.save_plan}")
    return "\n".join(lines)
