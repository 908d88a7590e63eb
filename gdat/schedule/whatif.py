"""What-if: re-predict a profile's allreduce cost for another network, node layout or algorithm.

Network (:class:`Network`).  ``N`` nodes of ``L`` ranks each (``p = N L``; ranks of
a node are numbered consecutively, as torchrun and Slurm do).  Each node has one
link to a switch of rate ``R_inter`` bytes/s in *each* direction (full duplex),
and one queue of rate ``R_intra`` that *all* of the node's intra-node traffic
shares, both directions together (a host's loopback; the emulated testbed's
``tbf`` on ``lo``).  A link of MTU ``m`` carries ``w(m) = (m + 14) / (m - 52)``
wire bytes per payload byte: ``tc``/NICs count Ethernet (14), IP (20) and TCP (20
+ 12 of timestamps) headers, so 4.6% at MTU 1500 and 0.1% on a 64 KiB loopback.

Bandwidth term.  For an allreduce of ``n`` bytes, let ``q`` be the payload bytes
per allreduced byte that cross a queue; the allreduce is a pipeline, so the
slowest queue sets its rate:  ``beta = max_queues q w / R``.

* ring (reduce-scatter + all-gather; gloo's and NCCL's ring): each of the ``p``
  ring edges carries ``e = 2 (p-1) / p`` bytes per byte.  One node: all ``L``
  edges cross the node's shared queue, ``q_intra = L e`` (``= 2 (p-1)``: two
  ranks on a shared loopback see half its rate each way).  ``N >= 2``: ``L - 1``
  edges stay inside each node (``q_intra = (L-1) e``) and one leaves and one
  enters it (``q_inter = e`` each direction).
* tree (NCCL's: a chain inside each node, a double binary tree between nodes):
  every chain edge carries ``n`` up and ``n`` down, ``q_intra = 2 (L-1)``; each
  node sends and receives ``2 n`` over its link, ``q_inter = 2``.

Latency term.  ``alpha = h a``: ``a`` is the per-hop latency, ``h`` the hops on
the critical path, ``2 (p-1)`` for ring and ``2 (ceil(log2 N) + L - 1)`` for tree.

Sources: ring allreduce cost ``2 (p-1) a + 2 (p-1)/p n / B`` and its bandwidth
optimality (Patarasuk & Yuan, "Bandwidth optimal all-reduce algorithms for
clusters of workstations", JPDC 2009; Thakur, Rabenseifner & Gropp, "Optimization
of collective communication operations in MPICH", IJHPCA 2005); double binary
trees (Sanders, Speck & Traeff, "Two-tree algorithms for full bandwidth broadcast,
reduction and scan", Parallel Computing 2009) as NCCL uses them between nodes
(NCCL 2.4 release notes and blog, 2019).  docs/whatif.md derives the loads.

Transfer (:func:`whatif_cost`).  The profile's calibrated cost was measured on
network ``M``; for messages of the largest segment it is ``alpha_m + beta_m n``.
Its efficiency ``eta = beta_m / beta_link(M)`` (what the in-situ allreduces achieve
against the nominal links; 1 when ``M``'s rates are not known) carries over:
``beta_T = eta beta_link(T)``.  When ``M``'s rate is not known, it is recovered
from ``beta_m`` (``R = q w / beta_m`` for ``M``'s bottleneck queue), and a target
that names no new rate keeps it.  The measured model moves segment by segment:
each segment's per-byte cost is scaled by ``beta_T / beta_m`` and its latency by
the hop ratio ``h(T) / h(M)``, so the shape the ladder measured (latency-bound
small messages, a protocol change at a size threshold) is kept, and a what-if
that changes nothing predicts exactly what the measured model predicts.  Between
layouts (another number of nodes or ranks per node) the shape is not trusted below
the largest segment: a ladder's cheaper per-byte cost for small messages is the
network's small-message regime (on the emulated testbed, ``tbf``'s burst: 1 MB
passes at line rate after the link idled), and how much of it a message finds
depends on how busy the links are, which a layout change alters.  No segment then
costs less per byte than the largest one (each keeps its latency) before the
scaling; measured on 2 nodes x 1 rank -> 2 nodes x 2 ranks, a plan of 34 buckets
was predicted 11.6% fast with the source's small-message segment and 4.6% without it
(docs/whatif.md, "Not modelled").

Compute (:func:`scaled_compute`).  Data parallelism keeps the per-rank batch, so
each rank's compute is taken as measured, unless its ranks share processors
differently: with ``core_sharing = S`` each rank gets ``1/S`` of the processor time
it had (more ranks or threads per core), so every time of the compute timeline
(forward, each gradient's ready time, backward's end, DDP's copy-back, the rest of
the step) is multiplied by ``S``, and so is ``kappa``: the communication library's
threads run on the same cores, and the share they get while backward runs shrinks
alike.
Ranks of ``t`` threads on ``c`` cores give ``S = max(1, L_T t / c) / max(1, L_M t
/ c)`` (2 when four single-threaded ranks take the two cores two ranks had); one
rank per GPU gives 1.  The cast cost of compression is kept.

Contention (:func:`whatif_contention`).  Overlapped communication steals CPU from
backward in proportion to the bytes it moves per second: the stretch above 1
scales with the ratio of link rates, ``sigma_T = 1 + (sigma_m - 1) beta_m /
beta_T``; the comm slowdown ``kappa`` is kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from gdat.core.cost_model import AllreduceCostModel, Contention, CostSegment
from gdat.core.profile import Profile, ReadyTimeline
from gdat.core.units import format_rate
from gdat.errors import UsageError
from gdat.schedule.simulator import calibrate

__all__ = ["ALGOS", "Network", "wire_factor", "queue_loads", "link_beta", "hops", "network_of",
           "whatif_cost", "whatif_contention", "scaled_compute", "WhatIf", "whatif_model", "LOOPBACK_MTU",
           "ETHERNET_MTU"]

ALGOS = ("ring", "tree")
LOOPBACK_MTU = 65536
ETHERNET_MTU = 1500
_L2_BYTES = 14
_L3_L4_BYTES = 52


def wire_factor(mtu: int) -> float:
    """Wire bytes per payload byte of TCP over Ethernet at MTU ``mtu``: ``(m + 14) / (m - 52)``."""
    return (mtu + _L2_BYTES) / (mtu - _L3_L4_BYTES)


@dataclass(frozen=True)
class Network:
    """``nodes`` x ``ranks_per_node`` ranks and their links (module docstring).

    Rates are bytes per second, ``None`` where not known (or not used)."""

    nodes: int
    ranks_per_node: int
    inter_bytes_per_s: float | None = None
    intra_bytes_per_s: float | None = None
    inter_mtu: int = ETHERNET_MTU
    intra_mtu: int = LOOPBACK_MTU

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.ranks_per_node < 1:
            raise UsageError("a network needs at least one node and one rank per node")
        if self.nodes * self.ranks_per_node < 2:
            raise UsageError("what-if needs world sizes of at least 2")
        for mtu in (self.inter_mtu, self.intra_mtu):
            if mtu <= _L3_L4_BYTES:
                raise UsageError(f"MTU {mtu} leaves no room for a TCP payload")

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    def bottleneck(self) -> str:
        """The link class that limits a ring when both rates are equal: ``inter``
        across nodes, else ``intra``."""
        return "inter" if self.nodes > 1 else "intra"

    def describe(self) -> str:
        parts = [f"{self.nodes} node{'s' if self.nodes > 1 else ''} x {self.ranks_per_node} rank"
                 f"{'s' if self.ranks_per_node > 1 else ''}"]
        if self.nodes > 1:
            parts.append("inter-node " + (format_rate(self.inter_bytes_per_s) + " each way"
                                          if self.inter_bytes_per_s else "as measured"))
        if self.ranks_per_node > 1:
            parts.append("intra-node " + (format_rate(self.intra_bytes_per_s) + " shared"
                                          if self.intra_bytes_per_s else "shared, as measured"))
        return ", ".join(parts)


def queue_loads(net: Network, algo: str) -> dict[str, float]:
    """Payload bytes per allreduced byte crossing each queue class (module docstring)."""
    if algo not in ALGOS:
        raise UsageError(f"--algo must be ring or tree, got {algo!r}")
    p, n, lpn = net.world_size, net.nodes, net.ranks_per_node
    if algo == "ring":
        e = 2.0 * (p - 1) / p
        return {"intra": lpn * e} if n == 1 else {"intra": (lpn - 1) * e, "inter": e}
    loads = {"intra": 2.0 * (lpn - 1)}
    if n > 1:
        loads["inter"] = 2.0
    return loads


def _queue_time(net: Network, kind: str, load: float) -> float | None:
    rate = net.inter_bytes_per_s if kind == "inter" else net.intra_bytes_per_s
    mtu = net.inter_mtu if kind == "inter" else net.intra_mtu
    if load == 0:
        return 0.0
    return None if not rate else load * wire_factor(mtu) / rate


def link_beta(net: Network, algo: str) -> float | None:
    """Seconds per allreduced byte the links allow (``max q w / R``); ``None`` when
    a loaded queue's rate is unknown."""
    times = [_queue_time(net, k, q) for k, q in queue_loads(net, algo).items()]
    return None if any(t is None for t in times) else max(times)


def hops(net: Network, algo: str) -> int:
    """Hops on an allreduce's critical path: ``2 (p-1)`` ring, ``2 (ceil(log2 N) + L - 1)`` tree."""
    if algo == "ring":
        return 2 * (net.world_size - 1)
    return 2 * (math.ceil(math.log2(net.nodes)) + net.ranks_per_node - 1)


def network_of(profile: Profile, inter_bytes_per_s: float | None = None,
               intra_bytes_per_s: float | None = None) -> Network:
    """The layout a profile ran on (nodes = distinct hostnames of its ranks)."""
    hosts = [r.host for r in profile.ranks] or ["?"] * profile.world_size
    nodes = len(set(hosts))
    per_node = max(1, profile.world_size // nodes)
    return Network(nodes, per_node, inter_bytes_per_s, intra_bytes_per_s)


def _with_recovered_rate(measured: Network, beta_s_per_byte: float, algo: str) -> Network:
    """``measured`` with its bottleneck's unknown rate recovered from the fitted beta."""
    kind = measured.bottleneck()
    load = queue_loads(measured, algo).get(kind, 0.0)
    mtu = measured.inter_mtu if kind == "inter" else measured.intra_mtu
    rate = load * wire_factor(mtu) / beta_s_per_byte if beta_s_per_byte > 0 else None
    if kind == "inter" and measured.inter_bytes_per_s is None:
        return replace(measured, inter_bytes_per_s=rate)
    if kind == "intra" and measured.intra_bytes_per_s is None:
        return replace(measured, intra_bytes_per_s=rate)
    return measured


def _fill_unknown(target: Network, measured: Network) -> Network:
    """Rates the target does not name are the measured network's; a one-node
    measurement gives inter-node links each rank's share of its shared queue."""
    share = (measured.intra_bytes_per_s / measured.ranks_per_node
             if measured.nodes == 1 and measured.intra_bytes_per_s else None)
    return replace(target,
                   inter_bytes_per_s=target.inter_bytes_per_s or measured.inter_bytes_per_s or share,
                   intra_bytes_per_s=target.intra_bytes_per_s or measured.intra_bytes_per_s)


def whatif_cost(measured_cost: AllreduceCostModel, measured: Network, target: Network,
                algo: str = "ring") -> AllreduceCostModel:
    """The measured cost model moved to ``target`` (module docstring, "Transfer")."""
    beta_m = measured_cost.beta_s_per_byte
    nominal = link_beta(measured, "ring")
    known = measured if nominal is not None else _with_recovered_rate(measured, beta_m, "ring")
    eta = beta_m / nominal if nominal else 1.0
    full = _fill_unknown(target, known)
    beta_t = link_beta(full, algo)
    if beta_t is None:
        raise UsageError(f"what-if: no rate known for the links of {target.describe()}; give --inter-node-bandwidth "
                         f"and --intra-node-bandwidth")
    beta_scale = eta * beta_t / beta_m if beta_m > 0 else 1.0
    hop_scale = hops(target, algo) / hops(measured, "ring")
    same_layout = (target.nodes, target.ranks_per_node) == (measured.nodes, measured.ranks_per_node)
    return AllreduceCostModel(
        tuple(CostSegment(s.min_bytes, s.alpha_s * hop_scale,
                          (s.beta_s_per_byte if same_layout else max(s.beta_s_per_byte, beta_m)) * beta_scale)
              for s in measured_cost.segments),
        source=f"what-if {algo}: {full.describe()}", cast=measured_cost.cast)


def whatif_contention(measured: Contention, measured_beta_s_per_byte: float,
                      target_beta_s_per_byte: float, core_sharing: float = 1.0) -> Contention:
    """Contention on the target (module docstring, "Contention"; ``kappa`` times
    ``core_sharing``, "Compute")."""
    kappa = measured.comm_slowdown * core_sharing
    if target_beta_s_per_byte <= 0:
        return Contention(measured.compute_stretch, kappa)
    ratio = measured_beta_s_per_byte / target_beta_s_per_byte
    return Contention(1.0 + (measured.compute_stretch - 1.0) * ratio, kappa)


@dataclass(frozen=True)
class WhatIf:
    """The model of a profile on another network: its compute timeline, the cost and
    contention there, and the measured model it came from."""

    timeline: ReadyTimeline
    cost: AllreduceCostModel
    contention: Contention
    measured_cost: AllreduceCostModel
    measured_contention: Contention


def scaled_compute(timeline: ReadyTimeline, factor: float) -> ReadyTimeline:
    """``timeline`` with every compute time multiplied by ``factor`` (module docstring, "Compute")."""
    return replace(timeline, ready_s=tuple(t * factor for t in timeline.ready_s),
                   backward_start_s=timeline.backward_start_s * factor,
                   backward_end_s=timeline.backward_end_s * factor, post_s=timeline.post_s * factor,
                   copy_s_per_byte=timeline.copy_s_per_byte * factor)


def whatif_model(profile: Profile, measured: Network, target: Network, algo: str = "ring",
                 core_sharing: float = 1.0) -> WhatIf:
    """Calibrate ``profile`` (:func:`gdat.schedule.simulator.calibrate`), then move
    its cost and contention from ``measured`` to ``target``, its ranks getting
    ``1 / core_sharing`` of the processor time they had (module docstring, "Compute")."""
    if not core_sharing > 0:
        raise UsageError(f"--core-sharing must be a positive number, got {core_sharing!r}")
    if profile.cost_model is None:
        raise UsageError("the profile has no allreduce cost model")
    fitted = calibrate(profile, profile.cost_model)
    cost = whatif_cost(fitted.cost, measured, target, algo)
    contention = whatif_contention(fitted.contention, fitted.cost.beta_s_per_byte, cost.beta_s_per_byte,
                                   core_sharing)
    timeline = scaled_compute(profile.ready_timeline("compute"), core_sharing)
    return WhatIf(timeline, cost, contention, fitted.cost, fitted.contention)
