"""Built-in models for the demo, the tests and the benchmarks.

* ``transformer``: pre-norm encoder blocks (attention from plain ``Linear`` layers,
  GELU MLP), ``d_model`` wide; 16 parameter tensors a block.
* ``mlp``: ``depth`` square ``Linear`` layers with ReLU; 2 tensors a layer.
* ``conv``: a small residual conv net (3x3 convs, batch norm) with a linear head.
* ``branch``: the transformer plus one more block, registered last, that runs only
  on every second training forward: its parameters are unused on the other steps,
  so DDP needs ``find_unused_parameters=True``.

``synthetic_batch(name, model, rank, step, batch)`` gives a deterministic input and
target for each rank and step, so two runs of the same script see the same data.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MODELS", "build_model", "synthetic_batch", "loss_fn"]


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln2 = nn.LayerNorm(d)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.ln1(x)
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        att = torch.softmax(split(self.q(h)) @ split(self.k(h)).transpose(-1, -2) / math.sqrt(d // self.heads), -1)
        x = x + self.o((att @ split(self.v(h))).transpose(1, 2).reshape(b, t, d))
        return x + self.down(torch.nn.functional.gelu(self.up(self.ln2(x))))


class Transformer(nn.Module):
    def __init__(self, d: int = 256, layers: int = 4, heads: int = 4, vocab: int = 512) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.Sequential(*(_Block(d, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(tokens))))


class BranchTransformer(Transformer):
    """:class:`Transformer` with a block used on odd-numbered training forwards only."""

    def __init__(self, d: int, layers: int, heads: int = 4) -> None:
        super().__init__(d=d, layers=layers, heads=heads)
        self.branch = _Block(d, heads)
        self.calls = 0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.embed(tokens))
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls % 2 == 0:
                x = self.branch(x)
        return self.head(self.norm(x))


class ConvNet(nn.Module):
    def __init__(self, width: int = 64, blocks: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                          nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
            for _ in range(blocks))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(x.mean(dim=(2, 3)))


def _mlp(width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers)


MODELS = ("transformer", "mlp", "conv", "branch")


def build_model(name: str, size: str = "small", seed: int = 0) -> nn.Module:
    """A model by name; ``size`` is ``tiny`` (tests), ``small`` (demo) or ``large``
    (benchmarks: >= 40 tensors and >= 50 MB of gradients)."""
    torch.manual_seed(seed)
    dims = {
        "transformer": {"tiny": (64, 2), "small": (256, 4), "large": (512, 6)},
        "branch": {"tiny": (64, 2), "small": (256, 4), "large": (512, 6)},
        "mlp": {"tiny": (64, 6), "small": (512, 12), "large": (1024, 20)},
        "conv": {"tiny": (16, 2), "small": (64, 4), "large": (256, 8)},
    }
    if name not in dims:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    a, b = dims[name][size]
    if name == "transformer":
        return Transformer(d=a, layers=b)
    if name == "branch":
        return BranchTransformer(d=a, layers=b)
    if name == "mlp":
        return _mlp(a, b)
    return ConvNet(width=a, blocks=b)


def synthetic_batch(name: str, model: nn.Module, rank: int, step: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic ``(input, target)`` for ``rank`` at ``step``."""
    g = torch.Generator().manual_seed(100003 * step + rank)
    if name in ("transformer", "branch"):
        vocab = model.head.out_features
        tokens = torch.randint(vocab, (batch, 64), generator=g)
        return tokens, torch.roll(tokens, -1, dims=1)
    if name == "mlp":
        width = model[0].in_features
        return torch.randn(batch, width, generator=g), torch.randn(batch, width, generator=g)
    return torch.randn(batch, 3, 32, 32, generator=g), torch.randint(10, (batch,), generator=g)


def loss_fn(name: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if name in ("transformer", "branch"):
        return nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))
    if name == "mlp":
        return nn.functional.mse_loss(output, target)
    return nn.functional.cross_entropy(output, target)
