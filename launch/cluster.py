"""Emulated nodes: N network namespaces joined by a shaped switch, one command per node.

Layout (all in namespaces this module makes, removed afterwards)::

    node0 ns: lo [tbf INTRA]   eth0 198.18.0.1 [tbf RATE] ──veth── s0 [tbf RATE] ┐
    node1 ns: lo [tbf INTRA]   eth0 198.18.0.2 [tbf RATE] ──veth── s1 [tbf RATE] ┼ br0 (switch ns)
    ...                                                                          ┘

* Each node is its own network namespace and, for the command it runs, its own UTS
  namespace (hostname ``node<i>``) and mount namespace, in which ``/etc/hosts``
  maps every node's hostname to its address.  Ranks on one node reach each other
  over the node's loopback (traffic to the node's own address stays on ``lo``);
  ranks on different nodes over the switch.
* Links.  Every node's link is shaped to ``RATE`` in each direction, full duplex:
  ``tbf`` on the node's ``eth0`` (what the node sends) and on its switch port
  (what it receives).  ``INTRA`` optionally shapes the node's loopback, one queue
  for all of the node's intra-node traffic.  This is the layout
  :class:`gdat.schedule.whatif.Network` models.
* ``tbf`` counts every byte of a frame: Ethernet, IP and TCP headers included, so a
  link of MTU ``m`` carries ``(m + 14) / (m - 52)`` wire bytes per payload byte
  (4.6% at 1500).
* Addresses come from 198.18.0.0/15, the range reserved for network benchmarks
  (RFC 2544), and exist only inside these namespaces: no traffic leaves them.

:func:`run_on_nodes` runs one command on every node (``torchrun`` or ``gdat-run``
with ``--rdzv-backend c10d --rdzv-endpoint node0:PORT``, exactly as on a cluster).
Ports inside the namespaces are private to them.

Python::

    with emulated_cluster(2, "1gbit") as cluster:
        codes = run_on_nodes(cluster, ["gdat-run", "--nnodes", "2", ...])
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

from gdat.core.units import format_rate, parse_rate
from gdat.errors import UsageError
from launch import netns
from launch.errors import TestbedError

__all__ = ["Node", "Cluster", "emulated_cluster", "run_on_nodes", "SUBNET"]

SUBNET = "198.18.0"
_HEAD = 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"'


@dataclass(frozen=True)
class Node:
    """One emulated node: ``wrap(cmd)`` runs ``cmd`` on it (its network, hostname and hosts file)."""

    rank: int
    namespace: str
    hostname: str
    address: str
    hosts_file: str

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        return [netns.ip(), "netns", "exec", self.namespace, netns.tool("unshare") or "unshare", "--uts", "--mount",
                "--", "sh", "-c", _HEAD, "gdat-node", self.hosts_file, self.hostname, *cmd]


@dataclass(frozen=True)
class Cluster:
    """Live emulated nodes and the rates of their links (bytes per second)."""

    nodes: tuple[Node, ...]
    switch: str
    inter_bytes_per_s: float
    intra_bytes_per_s: float | None
    mtu: int

    @property
    def head(self) -> Node:
        return self.nodes[0]

    def describe(self) -> str:
        intra = format_rate(self.intra_bytes_per_s) if self.intra_bytes_per_s else "unlimited"
        return (f"{len(self.nodes)} nodes ({', '.join(n.hostname for n in self.nodes)}), links "
                f"{format_rate(self.inter_bytes_per_s)} each way (MTU {self.mtu}), loopback {intra}")


def _check(nodes: int, mtu: int) -> None:
    if not 1 <= nodes <= 200:
        raise UsageError(f"--nodes must be between 1 and 200, got {nodes}")
    if not 576 <= mtu <= 65535:
        raise UsageError(f"--mtu must be between 576 and 65535, got {mtu}")


def _add_node(i: int, name: str, switch: str, mtu: int, rate: str, intra: str | None,
              burst: str, latency: str) -> None:
    ip = netns.ip()
    netns.run([ip, "netns", "add", name], "create a node's network namespace")
    netns.run([ip, "-n", switch, "link", "add", f"s{i}", "mtu", str(mtu), "type", "veth", "peer", "name", "eth0",
               "mtu", str(mtu), "netns", name], "create a veth pair")
    netns.run([ip, "-n", switch, "link", "set", f"s{i}", "master", "br0", "up"], "attach a node to the switch")
    netns.run([ip, "-n", name, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0"], "address a node")
    netns.run([ip, "-n", name, "link", "set", "eth0", "up"], "bring up a node's link")
    netns.run([ip, "-n", name, "link", "set", "lo", "up"], "bring up a node's loopback")
    netns.shape(name, "eth0", rate, burst, latency)
    netns.shape(switch, f"s{i}", rate, burst, latency)
    if intra:
        netns.shape(name, "lo", intra, burst, latency)


@contextlib.contextmanager
def emulated_cluster(
    nodes: int, rate: str, intra_rate: str | None = None, mtu: int = 1500, burst: str = "1mb",
    latency: str = "200ms",
) -> Iterator[Cluster]:
    """Make ``nodes`` emulated nodes for the ``with`` block (module docstring), then
    remove everything, also on an exception or Ctrl-C."""
    _check(nodes, mtu)
    inter = parse_rate(rate)
    intra = parse_rate(intra_rate) if intra_rate else None
    burst = netns.check_amount(burst, netns.SIZE_UNITS, "burst", "1mb")
    latency = netns.check_amount(latency, netns.TIME_UNITS, "latency", "200ms")
    reason = netns.namespace_unavailable_reason()
    if reason:
        raise TestbedError(f"emulated nodes unavailable: {reason}")
    if netns.tool("unshare") is None:
        raise TestbedError("emulated nodes unavailable: the 'unshare' command is missing (install util-linux)")
    base = netns.unique_name()
    switch = f"{base}-sw"
    names = [f"{base}-n{i}" for i in range(nodes)]
    tmp = tempfile.mkdtemp(prefix="gdat-cluster-")
    made: list[str] = []
    try:
        hosts = os.path.join(tmp, "hosts")
        with open(hosts, "w", encoding="utf-8") as f:
            f.write("127.0.0.1 localhost\n::1 localhost\n" + "".join(
                f"{SUBNET}.{i + 1} node{i}\n::ffff:{SUBNET}.{i + 1} node{i}\n" for i in range(nodes)))
        os.chmod(tmp, 0o755)
        os.chmod(hosts, 0o644)
        netns.run([netns.ip(), "netns", "add", switch], "create the switch's network namespace")
        made.append(switch)
        netns.run([netns.ip(), "-n", switch, "link", "add", "br0", "type", "bridge"], "create the switch")
        netns.run([netns.ip(), "-n", switch, "link", "set", "br0", "up"], "bring up the switch")
        for i, name in enumerate(names):
            made.append(name)
            _add_node(i, name, switch, mtu, rate.strip(), intra_rate.strip() if intra_rate else None,
                      burst, latency)
        yield Cluster(tuple(Node(i, n, f"node{i}", f"{SUBNET}.{i + 1}", hosts) for i, n in enumerate(names)),
                      switch, inter, intra, mtu)
    finally:
        for name in reversed(made):
            netns.remove(name)
        shutil.rmtree(tmp, ignore_errors=True)


def _stop(procs: list[subprocess.Popen], wait_s: float = 10.0) -> None:
    """SIGTERM each still-running command's process group, then SIGKILL after ``wait_s``."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    for p in live:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def run_on_nodes(
    cluster: Cluster, cmd: Sequence[str], env: dict[str, str] | None = None, grace_s: float = 30.0,
    timeout_s: float | None = None, stdout=None, stderr=None,
) -> list[int]:
    """Run ``cmd`` on every node at once; returns each node's exit status.

    When one node's command fails, the others get ``grace_s`` seconds to finish
    (a real job's peers would wait for their rendezvous timeout), then are stopped
    like everything still running at ``timeout_s`` or on Ctrl-C/SIGTERM (which is
    re-raised).  ``stdout``/``stderr`` are passed to every node's process (files
    or ``None`` to inherit).  A stopped command reports a negative status.
    """
    procs = [subprocess.Popen(node.wrap(cmd), env={**os.environ, **(env or {})}, stdout=stdout, stderr=stderr,
                              start_new_session=True) for node in cluster.nodes]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    failed_at: float | None = None
    try:
        while None in [p.poll() for p in procs]:
            now = time.monotonic()
            if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
                failed_at = now
            if (failed_at is not None and now - failed_at > grace_s) or (deadline is not None and now > deadline):
                _stop(procs)
                break
            time.sleep(0.1)
    except BaseException:
        _stop(procs)
        raise
    return [p.returncode for p in procs]
