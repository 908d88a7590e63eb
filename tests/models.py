"""Small models for tests (deterministic given the seed)."""
from __future__ import annotations

import torch


def mlp(width: int = 64, depth: int = 6, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers)


def batch(rank: int, step: int, width: int = 64, n: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(n, width, generator=g)
