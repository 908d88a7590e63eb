"""gdat: gradient auto-tuning for data-parallel PyTorch.

``gdat.DistributedDataParallel`` is the drop-in replacement for stock DDP (imported
on first use, so ``import gdat`` stays light).
"""
from typing import Any

__version__ = "0.1.0"
__all__ = ["DistributedDataParallel", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "DistributedDataParallel":
        from gdat.ddp import DistributedDataParallel

        return DistributedDataParallel
    raise AttributeError(f"module 'gdat' has no attribute {name!r}")
