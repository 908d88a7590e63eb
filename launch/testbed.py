"""Emulated-network testbed: one rate-limited network namespace, or several emulated nodes.

One namespace (``--rate`` alone).  The namespace has only a loopback device,
shaped with a token bucket filter::

    ip netns add NAME
    ip netns exec NAME ip link set lo up
    ip netns exec NAME tc qdisc add dev lo root tbf rate RATE burst BURST latency LATENCY

Every rank of a job started inside talks over 127.0.0.1, so *all* traffic of all
ranks crosses one shaped queue of ``RATE`` (the one-node layout of
:class:`gdat.schedule.whatif.Network` with ``intra_bytes_per_s = RATE``).
``netem`` delay is not available in this kernel, so latency stays loopback's.

Several nodes (``--nodes N``): see :mod:`launch.cluster`; the command runs once
per node, as on a cluster.

Namespaces are removed afterwards, also on failure, Ctrl-C or SIGTERM; processes
left inside are killed first.

Shell::

    gdat-testbed --rate 2gbit -- torchrun --nproc-per-node 2 train.py
    gdat-testbed --nodes 2 --rate 1gbit -- gdat-run --nnodes 2 --nproc-per-node 1 \\
        --rdzv-backend c10d --rdzv-endpoint node0:29400 --rdzv-id job train.py

Python::

    with emulated_network("2gbit") as net:
        subprocess.run(net.wrap(["torchrun", ...]), check=True)
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterator, Sequence

from gdat.core.units import parse_rate
from gdat.errors import GdatError, UsageError
from launch import netns
from launch.errors import TestbedError

__all__ = ["namespace_unavailable_reason", "emulated_network", "Testbed", "main"]

namespace_unavailable_reason = netns.namespace_unavailable_reason


@dataclass(frozen=True)
class Testbed:
    """A live namespace: ``wrap(cmd)`` gives the command that runs ``cmd`` inside."""

    name: str
    rate: str
    bytes_per_s: float

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        return [netns.ip(), "netns", "exec", self.name, *cmd]


@contextlib.contextmanager
def emulated_network(
    rate: str, burst: str = "1mb", latency: str = "200ms", name: str | None = None
) -> Iterator[Testbed]:
    """Create a rate-limited namespace for the ``with`` block, then remove it."""
    bytes_per_s = parse_rate(rate)
    burst = netns.check_amount(burst, netns.SIZE_UNITS, "burst", "1mb")
    latency = netns.check_amount(latency, netns.TIME_UNITS, "latency", "200ms")
    reason = netns.namespace_unavailable_reason()
    if reason:
        raise TestbedError(f"emulated network unavailable: {reason}")
    name = name or netns.unique_name()
    try:
        netns.run([netns.ip(), "netns", "add", name], "create a network namespace")
        netns.run([netns.ip(), "-n", name, "link", "set", "lo", "up"], "bring up loopback")
        netns.shape(name, "lo", rate.strip(), burst, latency)
        yield Testbed(name, rate.strip(), bytes_per_s)
    finally:
        netns.remove(name)


def _terminate_on_sigterm() -> None:
    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _run_one(args: argparse.Namespace, cmd: list[str]) -> int:
    with emulated_network(args.rate, args.burst, args.latency) as net:
        print(f"gdat-testbed: namespace {net.name}, loopback limited to {net.rate}", file=sys.stderr, flush=True)
        child = subprocess.Popen(net.wrap(cmd))
        try:
            return child.wait()
        except KeyboardInterrupt:
            child.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=10)
            return 130


def _run_nodes(args: argparse.Namespace, cmd: list[str]) -> int:
    from launch.cluster import emulated_cluster, run_on_nodes

    with emulated_cluster(args.nodes, args.rate, args.intra_rate, mtu=args.mtu, burst=args.burst,
                          latency=args.latency) as cluster:
        print(f"gdat-testbed: {cluster.describe()}", file=sys.stderr, flush=True)
        try:
            codes = run_on_nodes(cluster, cmd, grace_s=args.grace)
        except KeyboardInterrupt:
            return 130
    failed = [c for c in codes if c > 0] or [128 - c for c in codes if c < 0]  # a stopped node: 128 + signal
    return failed[0] if failed else 0


def main(argv: list[str] | None = None) -> int:
    """``gdat-testbed``: run a command inside an emulated network (once per node with ``--nodes``)."""
    parser = argparse.ArgumentParser(
        prog="gdat-testbed",
        description="Run a command inside private network namespaces shaped with tc tbf: one namespace "
                    "whose loopback is limited to --rate, or with --nodes N, N emulated nodes joined by "
                    "links of --rate (the command runs once on every node). Everything is removed afterwards.")
    parser.add_argument("--rate", required=True,
                        help="link rate in tc units, e.g. 2gbit, 500mbit (with --nodes: each node's link "
                             "to the switch, each direction)")
    parser.add_argument("--nodes", type=int, default=None, help="emulate this many nodes (own hostname, "
                        "network and loopback each), joined by a switch")
    parser.add_argument("--intra-rate", default=None,
                        help="with --nodes: limit each node's loopback (its ranks' traffic) to this rate")
    parser.add_argument("--mtu", type=int, default=1500, help="with --nodes: MTU of the node links (default 1500)")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="with --nodes: seconds the other nodes get to finish after one fails (default 30)")
    parser.add_argument("--burst", default="1mb", help="tbf burst (default 1mb)")
    parser.add_argument("--latency", default="200ms", help="tbf queue latency bound (default 200ms)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        if not cmd:
            raise UsageError("no command given (usage: gdat-testbed --rate 2gbit -- COMMAND ...)")
        if args.nodes is None and (args.intra_rate is not None):
            raise UsageError("--intra-rate needs --nodes")
        _terminate_on_sigterm()
        return _run_one(args, cmd) if args.nodes is None else _run_nodes(args, cmd)
    except GdatError as e:
        print(f"gdat-testbed: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
