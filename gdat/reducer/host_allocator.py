"""The host allocator under a tuned DDP: glibc malloc's thresholds fixed where its own heuristic ends.

Model.  glibc's ``malloc`` serves a request of ``n`` bytes with a mapping of its own
(``mmap``, unmapped again on ``free``) when ``n >= mmap_threshold``, and returns the
top of its heap to the system when more than ``trim_threshold`` bytes are free
there.  Both start at 128 KiB and rise as the process frees mapped blocks (glibc's
dynamic threshold): freeing a mapped block of ``s <= 32 MiB`` sets
``mmap_threshold = s`` and ``trim_threshold = 2 s``.  A CPU training step allocates
and frees gradients and activations of megabytes: below the thresholds they are
reused from the heap; above them every step maps or grows the heap again and
faults each 4 KiB page back in, zeroed.

Why gdat fixes them.  The thresholds depend on which blocks a process happened to
free.  A launch that tunes frees the user's buckets (25 MiB by default) when it
switches to a plan, which raises them; a launch that applies the same plan at
construction (a knowledge-base hit, ``--gdat-plan``) never frees a block that
large.  On the Hugging Face GPT-2 of the benchmarks (2 ranks, gloo, 2 Gbit/s) the
applied plan took 10,900 page faults per step (43 MB) against none in the launch
that tuned it, and ran 0.3-3% slower than it was measured there; stock DDP took
8,000.  So when gdat builds a DDP whose gradients are on the CPU it sets the
thresholds, once per process, to where glibc's heuristic tops out,
``mmap_threshold = 32 MiB`` and ``trim_threshold = 64 MiB`` (:func:`fix_thresholds`),
in every launch that tunes, applies or profiles: a plan then runs as it was measured, and the user's configuration
is measured under the same allocator.  Cost: up to 64 MiB of freed heap kept per
process.  Nothing is changed where the C library is not glibc, or where the user
set malloc's own tuning (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_``, or ``glibc.malloc`` in ``GLIBC_TUNABLES``).
"""
from __future__ import annotations

import ctypes
import os

from gdat.core import log

__all__ = ["fix_for", "fix_thresholds", "user_settings", "MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES"]

MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES
_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_done: list[str] = []


def fix_for(device_type: str) -> None:
    """:func:`fix_thresholds` for a DDP whose gradients are on ``device_type``
    (only ``"cpu"``), saying what was done on the first call."""
    if device_type == "cpu":
        said = fix_thresholds()
        if said:
            log.info(said)


def fix_thresholds() -> str | None:
    """Set glibc's thresholds (module docstring) unless the user tuned malloc or the
    C library is not glibc, once per process: what was done, in words, on the first
    call, ``None`` on later ones."""
    if _done:
        return None
    _done.append(_fix())
    return _done[0]


def user_settings() -> list[str]:
    """The environment variables by which the user tuned malloc themselves."""
    user = [name for name in _USER_SETTINGS if name in os.environ]
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        user.append("GLIBC_TUNABLES")
    return user


def _fix() -> str:
    user = user_settings()
    if user:
        return f"host allocator left as set by {', '.join(user)}"
    try:
        libc_version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        libc_version = None
    if not libc_version:
        return "host allocator left alone (the C library is not glibc)"
    mallopt = ctypes.CDLL(None).mallopt
    if not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
        return f"host allocator left alone ({libc_version} refused mallopt)"
    return (f"host allocator: {libc_version} malloc thresholds fixed at {MMAP_THRESHOLD_BYTES // 2**20} MiB (mmap) "
            f"and {TRIM_THRESHOLD_BYTES // 2**20} MiB (trim), where its own heuristic ends")
