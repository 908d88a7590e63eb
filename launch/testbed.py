"""Emulated-network testbed: run a command in a private, rate-limited network namespace.

The namespace has only a loopback device, shaped with a token bucket filter::

    ip netns add NAME
    ip netns exec NAME ip link set lo up
    ip netns exec NAME tc qdisc add dev lo root tbf rate RATE burst BURST latency LATENCY

Every rank of a job started inside talks over 127.0.0.1, so *all* traffic of all
ranks crosses one shaped queue of ``RATE``.  For a ring allreduce of ``n`` bytes over
``p`` ranks each rank sends ``2 (p-1)/p * n`` bytes, so the queue carries
``2 (p-1) n`` bytes and the bandwidth term is ``beta = 2 (p-1) / RATE`` seconds per
byte (RATE in bytes per second); see :func:`expected_ring_beta`.  ``netem`` delay is
not available in this kernel, so latency stays loopback's.

The namespace is removed afterwards, also on failure, Ctrl-C or SIGTERM; processes
left inside are killed first.

Shell::

    gdat-testbed --rate 2gbit -- torchrun --nproc-per-node 2 train.py
    python -m launch.testbed --rate 500mbit -- python bench.py

Python::

    with emulated_network("2gbit") as net:
        subprocess.run(net.wrap(["torchrun", ...]), check=True)
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Iterator, Sequence

from gdat.errors import GdatError, TestbedError, UsageError

__all__ = [
    "parse_rate",
    "expected_ring_beta",
    "namespace_unavailable_reason",
    "emulated_network",
    "Testbed",
    "main",
]

_RATE_UNITS = {
    "bit": 1 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8, "tbit": 1e12 / 8,
    "bps": 1.0, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9, "tbps": 1e12,
}
_SIZE_UNITS = {"b": 1, "k": 1024, "kb": 1024, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_rate(rate: str) -> float:
    """Bytes per second of a tc rate such as ``2gbit`` or ``100mbps`` (tc units:
    ``bit`` suffixes are bits per second, ``bps`` suffixes bytes per second, SI prefixes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*", rate or "")
    if not m or m.group(2).lower() not in _RATE_UNITS or float(m.group(1)) <= 0:
        raise UsageError(f"invalid rate {rate!r}: expected a positive number with a unit such as 500mbit or 2gbit")
    return float(m.group(1)) * _RATE_UNITS[m.group(2).lower()]


def _check_amount(value: str, units: dict[str, float], what: str, example: str) -> str:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value or "")
    if not m or m.group(2).lower() not in units or float(m.group(1)) <= 0:
        raise UsageError(f"invalid {what} {value!r}: expected e.g. {example}")
    return value.strip()


def expected_ring_beta(rate: str, world_size: int) -> float:
    """Seconds per byte of a ring allreduce when all ranks share one link of ``rate``:
    ``2 (p-1) / RATE``."""
    return 2.0 * (world_size - 1) / parse_rate(rate)


def _tool(name: str) -> str | None:
    """Absolute path of ``ip`` or ``tc``: on PATH, or in the sbin directories a
    non-login shell's PATH may lack."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    return shutil.which(name, path=search)


def _ip() -> str:
    return _tool("ip") or "ip"


def _tc() -> str:
    return _tool("tc") or "tc"


def namespace_unavailable_reason() -> str | None:
    """Why the testbed cannot be made here, or ``None`` when it can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run as root or use plain loopback)"
    for tool in ("ip", "tc"):
        if _tool(tool) is None:
            return f"the '{tool}' command is missing (install iproute2)"
    probe = f"gdat-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    made = subprocess.run([_ip(), "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip() or 'ip netns add failed'}"
    try:
        shaped = subprocess.run(
            [_ip(), "netns", "exec", probe, _tc(), "qdisc", "add", "dev", "lo", "root", "tbf",
             "rate", "1gbit", "burst", "1mb", "latency", "200ms"], capture_output=True, text=True)
        if shaped.returncode != 0:
            return f"tc tbf is not available: {shaped.stderr.strip()}"
    finally:
        subprocess.run([_ip(), "netns", "del", probe], capture_output=True)
    return None


@dataclass(frozen=True)
class Testbed:
    """A live namespace: ``wrap(cmd)`` gives the command that runs ``cmd`` inside."""

    name: str
    rate: str
    bytes_per_s: float

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        return [_ip(), "netns", "exec", self.name, *cmd]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise TestbedError(f"'{' '.join(cmd)}' failed: {done.stderr.strip() or done.returncode}")


def _remove(name: str) -> None:
    pids = subprocess.run([_ip(), "netns", "pids", name], capture_output=True, text=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run([_ip(), "netns", "del", name], capture_output=True)


@contextlib.contextmanager
def emulated_network(
    rate: str, burst: str = "1mb", latency: str = "200ms", name: str | None = None
) -> Iterator[Testbed]:
    """Create a rate-limited namespace for the ``with`` block, then remove it."""
    bytes_per_s = parse_rate(rate)
    burst = _check_amount(burst, _SIZE_UNITS, "burst", "1mb")
    latency = _check_amount(latency, _TIME_UNITS, "latency", "200ms")
    reason = namespace_unavailable_reason()
    if reason:
        raise TestbedError(f"emulated network unavailable: {reason}")
    name = name or f"gdat-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        _run([_ip(), "netns", "add", name])
        _run([_ip(), "netns", "exec", name, _ip(), "link", "set", "lo", "up"])
        _run([_ip(), "netns", "exec", name, _tc(), "qdisc", "add", "dev", "lo", "root", "tbf",
              "rate", rate.strip(), "burst", burst, "latency", latency])
        yield Testbed(name, rate.strip(), bytes_per_s)
    finally:
        _remove(name)


def _terminate_on_sigterm() -> None:
    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    """``gdat-testbed``: run one command inside an emulated network."""
    parser = argparse.ArgumentParser(
        prog="gdat-testbed",
        description="Run a command inside a private network namespace whose loopback is "
                    "rate-limited with tc tbf; the namespace is removed afterwards.")
    parser.add_argument("--rate", required=True, help="link rate in tc units, e.g. 2gbit, 500mbit")
    parser.add_argument("--burst", default="1mb", help="tbf burst (default 1mb)")
    parser.add_argument("--latency", default="200ms", help="tbf queue latency bound (default 200ms)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        if not cmd:
            raise UsageError("no command given (usage: gdat-testbed --rate 2gbit -- COMMAND ...)")
        _terminate_on_sigterm()
        with emulated_network(args.rate, args.burst, args.latency) as net:
            print(f"gdat-testbed: namespace {net.name}, loopback limited to {net.rate}", file=sys.stderr)
            child = subprocess.Popen(net.wrap(cmd))
            try:
                return child.wait()
            except KeyboardInterrupt:
                child.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=10)
                return 130
    except GdatError as e:
        print(f"gdat-testbed: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
