"""The device seam: the one module that names device types.

Everything device-specific that gdat needs goes through here:

* which process-group backend a device type uses by default
  (cpu -> gloo, cuda -> nccl, npu -> hccl);
* a :class:`Clock` that timestamps events in seconds on one time base.
  On the CPU a mark is ``time.perf_counter()``.  On an accelerator work is
  asynchronous, so a mark is a timing event recorded on the current stream and
  :meth:`Clock.resolve` converts events to seconds once the device has caught
  up: ``t = t_anchor + anchor.elapsed_time(event) / 1000``;
* a hardware fingerprint for the knowledge-base key.

Tested here: CPU.  The CUDA path is checked by ``benchmarks/check_cuda.py`` on a
GPU machine.  The Ascend path (torch_npu, hccl) follows the same generic
``torch.Event`` API but has never run: there is no Ascend hardware here.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Any

import torch

__all__ = [
    "Clock",
    "default_backend",
    "device_type_of",
    "synchronize",
    "hardware_fingerprint",
    "device_for_local_rank",
    "is_host",
    "device_for_backend",
]

_BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


def is_host(device_type: str) -> bool:
    """True when work on this device type runs synchronously on the host."""
    return device_type == "cpu"


def default_backend(device_type: str) -> str:
    """The process-group backend gdat uses for ``device_type`` (gloo for unknown types)."""
    return _BACKENDS.get(device_type, "gloo")


def device_type_of(module: torch.nn.Module) -> str:
    """Device type of the first parameter of ``module`` ("cpu" when it has none)."""
    for p in module.parameters():
        return p.device.type
    return "cpu"


def _import_backend(device_type: str) -> None:
    if device_type == "npu":
        import torch_npu  # noqa: F401  (registers the "npu" device with torch)


def device_for_local_rank(device_type: str, local_rank: int) -> torch.device:
    """The device a rank with ``local_rank`` should use (cpu ignores the index)."""
    if is_host(device_type):
        return torch.device("cpu")
    _import_backend(device_type)
    return torch.device(device_type, local_rank)


def device_for_backend(backend: str, local_rank: int) -> torch.device:
    """The device whose tensors ``backend`` reduces: the host for gloo (and unknown
    backends), this rank's accelerator for nccl and hccl."""
    for device_type, name in _BACKENDS.items():
        if name == backend and not is_host(device_type):
            return device_for_local_rank(device_type, local_rank)
    return torch.device("cpu")


def synchronize(device_type: str) -> None:
    """Wait until all queued work on the current accelerator is done (no-op on cpu)."""
    if is_host(device_type):
        return
    _import_backend(device_type)
    torch.get_device_module(device_type).synchronize()


class Clock:
    """Timestamps in seconds on the host's ``perf_counter`` time base.

    ``mark()`` is cheap enough for autograd hooks.  ``resolve(marks)`` turns the
    marks into floats (seconds); on an accelerator it synchronises first.
    """

    def __init__(self, device_type: str = "cpu") -> None:
        self.device_type = device_type
        self._host = is_host(device_type)
        self._anchor: Any = None
        self._anchor_s = 0.0
        if not self._host:
            _import_backend(device_type)

    def mark(self) -> Any:
        """A timestamp token for "now" on the device's current stream."""
        if self._host:
            return time.perf_counter()
        event = torch.Event(device=torch.device(self.device_type), enable_timing=True)
        event.record()
        if self._anchor is None:
            self._anchor = event
            event.synchronize()
            self._anchor_s = time.perf_counter()
        return event

    def resolve(self, marks: list[Any]) -> list[float]:
        """Seconds on the perf_counter time base for each mark, in order."""
        if self._host:
            return [float(m) for m in marks]
        synchronize(self.device_type)
        return [self._anchor_s + self._anchor.elapsed_time(m) / 1000.0 for m in marks]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_fingerprint(device_type: str) -> dict[str, str]:
    """What identifies this node's compute hardware, for knowledge-base keys."""
    fp = {"device_type": device_type, "cpu": _cpu_model(), "cpus": str(os.cpu_count())}
    if not is_host(device_type):
        _import_backend(device_type)
        mod = torch.get_device_module(device_type)
        fp["accelerator"] = str(mod.get_device_name(mod.current_device()))
    return fp
