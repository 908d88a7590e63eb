"""Network-namespace plumbing shared by the testbeds: tools, probes, shaping, removal.

Everything here acts only on namespaces the caller made (names it chose), never on
the host's own interfaces.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid

from gdat.errors import UsageError
from launch.errors import TestbedError

__all__ = ["tool", "ip", "tc", "unique_name", "namespace_unavailable_reason", "run", "shape", "remove",
           "check_amount", "SIZE_UNITS", "TIME_UNITS"]

SIZE_UNITS = {"b": 1, "k": 1024, "kb": 1024, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}
TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def tool(name: str) -> str | None:
    """Absolute path of a system tool (``ip``, ``tc``, ...): on PATH, or in the
    sbin directories a non-login shell's PATH may lack."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    return shutil.which(name, path=search)


def ip() -> str:
    return tool("ip") or "ip"


def tc() -> str:
    return tool("tc") or "tc"


def unique_name(tag: str = "") -> str:
    """A namespace name no other process will choose: pid and a random suffix."""
    return f"gdat-{os.getpid()}-{uuid.uuid4().hex[:6]}{tag}"


def check_amount(value: str, units: dict[str, float], what: str, example: str) -> str:
    """``value`` stripped, if it is a positive number with one of ``units``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value or "")
    if not m or m.group(2).lower() not in units or float(m.group(1)) <= 0:
        raise UsageError(f"invalid {what} {value!r}: expected e.g. {example}")
    return value.strip()


def namespace_unavailable_reason() -> str | None:
    """Why namespaces with a shaped loopback cannot be made here, or ``None``."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run as root or use plain loopback)"
    for name in ("ip", "tc"):
        if tool(name) is None:
            return f"the '{name}' command is missing (install iproute2)"
    probe = unique_name("-probe")
    made = subprocess.run([ip(), "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip() or 'ip netns add failed'}"
    try:
        shaped = subprocess.run(
            [ip(), "netns", "exec", probe, tc(), "qdisc", "add", "dev", "lo", "root", "tbf",
             "rate", "1gbit", "burst", "1mb", "latency", "200ms"], capture_output=True, text=True)
        if shaped.returncode != 0:
            return f"tc tbf is not available: {shaped.stderr.strip()}"
    finally:
        subprocess.run([ip(), "netns", "del", probe], capture_output=True)
    return None


def run(cmd: list[str], what: str) -> None:
    """Run a set-up command; a failure is a :class:`TestbedError` naming ``what``."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise TestbedError(f"cannot {what}: '{' '.join(cmd)}' failed: {done.stderr.strip() or done.returncode}")


def shape(namespace: str, device: str, rate: str, burst: str, latency: str) -> None:
    """Limit ``device``'s egress in ``namespace`` with a token bucket filter."""
    run([ip(), "netns", "exec", namespace, tc(), "qdisc", "add", "dev", device, "root", "tbf",
         "rate", rate, "burst", burst, "latency", latency], f"shape {device} to {rate}")


def remove(namespace: str) -> None:
    """Kill every process left in ``namespace``, then delete it (never raises)."""
    pids = subprocess.run([ip(), "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run([ip(), "netns", "del", namespace], capture_output=True)
