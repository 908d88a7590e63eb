"""``gdat simulate PROFILE``: predicted step times of bucket plans, as measured or what-if.

Without a what-if option the table uses the profile's calibrated model.  With one
(``--nodes``, ``--ranks-per-node``, ``--world-size``, a bandwidth, ``--algo tree``,
``--core-sharing``)
the cost is re-predicted by :mod:`gdat.schedule.whatif` for that network.  An
option that would not act on the prediction is refused with the option that would
(:func:`_refuse_idle_options`): a rate for a link the target or the profile's own
layout does not have, a measured rate without a target to carry it to, an option
the sweep has no use for.  The first line of the output names the layout and the
rates the prediction used.
When the profile's cost model holds a cast cost (profiled with ``--gdat-compress``),
the table also shows the plan that compresses the exposed tail
(:func:`gdat.schedule.compress_search.compressed_plan`) beside the exact ones.
``--sweep 2,4,...,1024`` predicts the optimum and DDP's default for each world
size (``N`` nodes of ``--ranks-per-node`` ranks) and ``--plot PATH`` draws step
time and exposed communication against it.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from gdat.core.cost_model import AllreduceCostModel, Contention
from gdat.core.plan import BucketPlan
from gdat.core.profile import Profile, ReadyTimeline
from gdat.core.units import parse_rate
from gdat.errors import UsageError
from gdat.schedule.baselines import mgwfbp_plan, uniform_plan, uniform_plans
from gdat.schedule.compress_search import SLACK, compressed_plan
from gdat.schedule.search import optimal_plan
from gdat.schedule.simulator import calibrate, lower_bound_s, simulate
from gdat.schedule.whatif import ALGOS, ETHERNET_MTU, Network, network_of, whatif_model

__all__ = ["add_simulate_arguments", "simulate_command"]

_WHATIF = ("nodes", "ranks_per_node", "world_size", "bandwidth", "intra_node_bandwidth", "sweep", "core_sharing")


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profile", help="profile JSON written by gdat profile / gdat-run")
    what = parser.add_argument_group("what-if (see docs/whatif.md)")
    what.add_argument("--nodes", type=int, default=None, help="predict for this many nodes")
    what.add_argument("--ranks-per-node", type=int, default=None,
                      help="ranks on each node (default: the profile's; 1 with --world-size)")
    what.add_argument("--world-size", type=int, default=None, help="predict for this many ranks in all")
    what.add_argument("--bandwidth", "--inter-node-bandwidth", dest="bandwidth", default=None,
                      help="each node's link, each direction, in tc units (e.g. 100gbit, 25gbps)")
    what.add_argument("--intra-node-bandwidth", default=None,
                      help="the queue all of a node's intra-node traffic shares (e.g. a loopback)")
    what.add_argument("--mtu", type=int, default=None, help="MTU of the inter-node links (default 1500)")
    what.add_argument("--measured-inter-node-bandwidth", default=None,
                      help="the inter-node rate the profile ran at, if known (carries its efficiency over)")
    what.add_argument("--measured-intra-node-bandwidth", default=None,
                      help="the intra-node rate the profile ran at, if known (carries its efficiency over)")
    what.add_argument("--core-sharing", type=float, default=None, metavar="S",
                      help="each rank gets 1/S of the processor time it had in the profile (more ranks or "
                           "threads per core; see docs/whatif.md)")
    what.add_argument("--algo", default="ring", help="allreduce algorithm: ring or tree (default ring)")
    what.add_argument("--sweep", default=None, metavar="N,N,...",
                      help="world sizes to predict the optimum and DDP's default for")
    what.add_argument("--plot", default=None, metavar="PNG", help="with --sweep: draw the sweep here")
    parser.add_argument("--max-buckets", type=int, default=None, help="limit the optimum's bucket count (AOE: 8)")
    parser.add_argument("--top", type=int, default=None, help="rows to print (default 12)")
    parser.add_argument("--save-plan", default=None, metavar="PATH",
                        help="save the plan predicted fastest, within --max-buckets (for gdat-run --gdat-plan PATH)")


def _rate(raw: str | None) -> float | None:
    return parse_rate(raw) if raw else None


def _positive(value: int | None, option: str) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{option} must be at least 1")


@dataclass(frozen=True)
class _Model:
    timeline: ReadyTimeline
    cost: AllreduceCostModel
    contention: Contention
    scope: str


def _target(args: argparse.Namespace, measured: Network, world: int | None = None) -> Network:
    world = world if world is not None else args.world_size
    per_node = args.ranks_per_node or (1 if world is not None and args.nodes is None else measured.ranks_per_node)
    if world is not None:
        if world % per_node:
            raise UsageError(f"world size {world} is not a multiple of {per_node} ranks per node")
        nodes = world // per_node
        if args.nodes is not None and args.nodes != nodes:
            raise UsageError(f"--nodes {args.nodes} x {per_node} ranks per node is not world size {world}")
    else:
        nodes = args.nodes or measured.nodes
    if nodes * per_node < 2:
        raise UsageError("what-if needs world sizes of at least 2")
    return Network(nodes, per_node, _rate(args.bandwidth), _rate(args.intra_node_bandwidth),
                   inter_mtu=args.mtu or ETHERNET_MTU)


def _whatif(args: argparse.Namespace) -> bool:
    """Whether the prediction is for another network than the profile's."""
    return any(getattr(args, k) is not None for k in _WHATIF) or args.algo != "ring"


def _measured(args: argparse.Namespace, profile: Profile) -> Network:
    return network_of(profile, _rate(args.measured_inter_node_bandwidth), _rate(args.measured_intra_node_bandwidth))


def _model(args: argparse.Namespace, profile: Profile, world: int | None = None) -> _Model:
    measured = _measured(args, profile)
    if not _whatif(args) and world is None:
        fitted = calibrate(profile, profile.cost_model)
        return _Model(profile.ready_timeline("compute"), fitted.cost, fitted.contention,
                      f"measured: {measured.describe()}; the allreduce as calibrated there")
    sharing = 1.0 if args.core_sharing is None else args.core_sharing
    m = whatif_model(profile, measured, _target(args, measured, world), args.algo, sharing)
    compute = f"; cores shared x{sharing:g}" if sharing != 1.0 else ""
    return _Model(m.timeline, m.cost, m.contention,
                  f"what-if: {m.cost.source.removeprefix('what-if ')}{compute}; profiled on {measured.describe()}")


def _refuse_idle_options(args: argparse.Namespace, profile: Profile) -> None:
    """Raise :class:`UsageError` naming an option that would not act on this
    prediction, and the option that would."""
    measured = _measured(args, profile)
    if args.measured_inter_node_bandwidth and measured.nodes == 1:
        raise UsageError("--measured-inter-node-bandwidth: the profile ran on one node, which has no inter-node "
                         "link; --measured-intra-node-bandwidth gives the rate its ranks shared")
    if args.measured_intra_node_bandwidth and measured.ranks_per_node == 1:
        raise UsageError("--measured-intra-node-bandwidth: the profile ran one rank per node, with no intra-node "
                         "traffic; --measured-inter-node-bandwidth gives its nodes' link rate")
    if args.sweep:
        for given, option in ((args.world_size, "--world-size"), (args.nodes, "--nodes")):
            if given is not None:
                raise UsageError(f"{option}: --sweep sets the world size of each prediction; --ranks-per-node "
                                 "sets the ranks of each node")
        for given, option in ((args.top, "--top"), (args.save_plan, "--save-plan")):
            if given is not None:
                raise UsageError(f"{option} acts on the table of plans, which --sweep does not print; drop --sweep")
        targets = [_target(args, measured, w) for w in _sweep_sizes(args.sweep)]
    elif _whatif(args):
        targets = [_target(args, measured)]
    else:
        for given, option in ((args.measured_inter_node_bandwidth, "--measured-inter-node-bandwidth"),
                              (args.measured_intra_node_bandwidth, "--measured-intra-node-bandwidth"),
                              (args.mtu, "--mtu")):
            if given is not None:
                raise UsageError(f"{option} acts only on a what-if prediction: add the target's --bandwidth, "
                                 "--intra-node-bandwidth, --nodes, --ranks-per-node, --world-size or --algo tree")
        return
    layout = targets[0].describe().split(",")[0]
    if all(t.nodes == 1 for t in targets):
        for given, option in ((args.bandwidth, "--bandwidth"), (args.mtu, "--mtu")):
            if given is not None:
                raise UsageError(f"{option} sets the links between nodes, and the target ({layout}) has one node: "
                                 "--intra-node-bandwidth sets the rate its ranks share (--nodes adds nodes)")
    if args.intra_node_bandwidth and all(t.ranks_per_node == 1 for t in targets):
        raise UsageError(f"--intra-node-bandwidth sets the rate a node's ranks share, and the target ({layout}) "
                         "has one rank per node: --bandwidth sets each node's link")


def _check(args: argparse.Namespace) -> None:
    if args.algo not in ALGOS:
        raise UsageError(f"--algo must be ring or tree, got {args.algo!r}")
    for value, option in ((args.max_buckets, "--max-buckets"), (args.top, "--top"), (args.nodes, "--nodes"),
                          (args.ranks_per_node, "--ranks-per-node")):
        _positive(value, option)
    if args.world_size is not None and args.world_size < 2:
        raise UsageError("what-if needs world sizes of at least 2")
    if args.plot and not args.sweep:
        raise UsageError("--plot needs --sweep")


def _table(args: argparse.Namespace, m: _Model) -> list[str]:
    plans: list[BucketPlan] = [optimal_plan(m.timeline, m.cost, m.contention, args.max_buckets)]
    plans += [*uniform_plans(m.timeline), mgwfbp_plan(m.timeline, m.cost, m.contention)]
    if m.cost.cast is not None:
        compressed = compressed_plan(m.timeline, m.cost, m.contention, m.cost.cast.dtype,
                                   f"optimal+{m.cost.cast.dtype}")
        plans += [compressed] if compressed is not None else []
    rows = sorted(((simulate(m.timeline, p, m.cost, m.contention), p) for p in plans), key=lambda r: r[0].step_s)
    bound = lower_bound_s(m.timeline, m.cost, m.contention)
    lines = [m.scope,
             f"allreduce t = {m.cost.alpha_s * 1e6:.1f} us + {m.cost.beta_s_per_byte * 1e9:.4f} ns/B; "
             f"contention sigma={m.contention.compute_stretch:.2f} kappa={m.contention.comm_slowdown:.2f}; "
             f"copy-back {m.timeline.copy_s_per_byte * 1e9:.3f} ns/B; {_slots(m.timeline.allreduce_slots)}; " + (
                 f"{m.cost.cast.dtype} cast {m.cost.cast.s_per_byte * 1e9:.4f} ns/B (a compressed plan is listed "
                 f"when compressing the tail saves more than {SLACK:.0%})" if m.cost.cast is not None
                 else "no cast cost (profile with --gdat-compress to compare compressed plans)"),
             f"{'plan':<28}{'buckets':>8}{'step ms':>10}{'exposed ms':>12}{'vs bound':>10}"]
    for sim, plan in rows[: args.top or 12]:
        lines.append(f"{plan.label:<28}{len(plan.buckets):>8}{sim.step_s * 1e3:>10.2f}"
                     f"{sim.exposed_comm_s * 1e3:>12.2f}{sim.step_s / bound:>10.3f}")
    lines.append(f"{'lower bound (exact plans)':<28}{'':>8}{bound * 1e3:>10.2f}")
    if args.save_plan:
        best = next(p for _, p in rows if args.max_buckets is None or len(p.buckets) <= args.max_buckets)
        best.save(args.save_plan)
        lines.append(f"the plan predicted fastest ({best.label}) saved to {args.save_plan}")
    return lines


def _slots(slots: int) -> str:
    if slots == 1:
        return "one allreduce at a time"
    return f"{slots} allreduces at once sharing the link (the optimum is exact one at a time, ranked with the rest)"


def _sweep_sizes(raw: str) -> list[int]:
    try:
        sizes = [int(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--sweep must be world sizes separated by commas, got {raw!r}") from None
    if not sizes or any(v < 2 for v in sizes):
        raise UsageError("--sweep needs world sizes of at least 2")
    return sizes


def _sweep(args: argparse.Namespace, profile: Profile) -> list[str]:
    rows = []
    for world in _sweep_sizes(args.sweep):
        m = _model(args, profile, world)
        opt = simulate(m.timeline, optimal_plan(m.timeline, m.cost, m.contention, args.max_buckets), m.cost,
                       m.contention)
        ddp = simulate(m.timeline, uniform_plan(m.timeline, 25, first_bucket=True), m.cost, m.contention)
        rows.append((world, opt, ddp))
    lines = [f"what-if sweep ({args.algo}): optimum against DDP's default (25 MiB + 1 MiB first)",
             f"{'ranks':>7}{'opt step ms':>13}{'opt exposed':>13}{'ddp step ms':>13}{'ddp exposed':>13}{'ddp/opt':>9}"]
    for world, opt, ddp in rows:
        lines.append(f"{world:>7}{opt.step_s * 1e3:>13.2f}{opt.exposed_comm_s * 1e3:>13.2f}"
                     f"{ddp.step_s * 1e3:>13.2f}{ddp.exposed_comm_s * 1e3:>13.2f}{ddp.step_s / opt.step_s:>9.3f}")
    if args.plot:
        _plot(args.plot, rows, lines[0])
        lines.append(f"plot saved to {args.plot}")
    return lines


def _plot(path: str, rows: list, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib (pip install 'gdat[plot]')") from None
    worlds = [r[0] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, label, color in ((1, "optimum", "tab:green"), (2, "DDP default", "tab:red")):
        ax.plot(worlds, [r[k].step_s * 1e3 for r in rows], "o-", color=color, label=f"{label}: step")
        ax.plot(worlds, [r[k].exposed_comm_s * 1e3 for r in rows], "s--", color=color, label=f"{label}: exposed comm")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ranks")
    ax.set_ylabel("ms")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def simulate_command(args: argparse.Namespace) -> str:
    """The text ``gdat simulate`` prints (raises :class:`UsageError` on bad input)."""
    _check(args)
    profile = Profile.load(args.profile)
    if profile.cost_model is None:
        raise UsageError(f"{args.profile}: the profile has no allreduce cost model")
    _refuse_idle_options(args, profile)
    if args.sweep:
        return "\n".join(_sweep(args, profile))
    return "\n".join(_table(args, _model(args, profile)))
