"""Where a job's ranks run: nodes, ranks per node, and the allreduce fit of each link class.

A node is a hostname: every rank's ``socket.gethostname()`` is gathered, and ranks
sharing one are on one node (emulated nodes have their own UTS namespace, so this
holds on the testbed as on a cluster).  ``ranks_per_node`` is the largest count
on one host (torchrun and Slurm give every node the same number).

Allreduce fits.  The start-up ladder on the whole job measures the slowest link
its ring crosses: the inter-node link when there are several nodes, the
intra-node one otherwise.  When a job has both (several nodes, several ranks on
each), :func:`intra_node_fit` runs the ladder again inside each node at once (one
subgroup per node) and fits it: the report then lists both.
"""
from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from gdat.core.collectives import gather_from_all
from gdat.core.cost_model import AllreduceCostModel
from gdat.profiling.allreduce_bench import fit_from_ladder, measure_allreduce

__all__ = ["Topology", "topology_of", "intra_node_fit"]


@dataclass(frozen=True)
class Topology:
    """The job's layout: rank ``r`` runs on ``hosts[r]``."""

    hosts: tuple[str, ...]

    @property
    def world_size(self) -> int:
        return len(self.hosts)

    @property
    def nodes(self) -> int:
        return len(set(self.hosts))

    @property
    def ranks_per_node(self) -> int:
        return max(Counter(self.hosts).values())

    def to_dict(self, fits: dict[str, AllreduceCostModel] | None = None) -> dict[str, Any]:
        """For the report: the layout and, per link class, the fitted ``alpha_us`` and ``beta_ns_per_byte``."""
        out: dict[str, Any] = {"nodes": self.nodes, "ranks_per_node": self.ranks_per_node,
                               "world_size": self.world_size, "hosts": sorted(set(self.hosts))}
        for name, fit in (fits or {}).items():
            out[f"{name}_allreduce"] = {"alpha_us": round(fit.alpha_s * 1e6, 3),
                                        "beta_ns_per_byte": round(fit.beta_s_per_byte * 1e9, 5),
                                        "segments": len(fit.segments)}
        return out


def topology_of(group: Any) -> Topology:
    """Gather every rank's hostname (a collective on ``group``)."""
    return Topology(tuple(gather_from_all(socket.gethostname(), group)))


def intra_node_fit(topology: Topology, group: Any, budget_s: float) -> AllreduceCostModel | None:
    """The ladder inside every node at once, fitted (a collective on ``group``);
    ``None`` unless the job has several nodes, each with several ranks."""
    if topology.nodes < 2 or min(Counter(topology.hosts).values()) < 2:
        return None
    ranks = [dist.get_global_rank(group, r) for r in range(topology.world_size)]
    by_host: dict[str, list[int]] = {}
    for rank, host in zip(ranks, topology.hosts):
        by_host.setdefault(host, []).append(rank)
    mine, _ = dist.new_subgroups_by_enumeration(sorted(by_host.values()))
    return fit_from_ladder(measure_allreduce(budget_s, mine), "microbenchmark, inside one node")
