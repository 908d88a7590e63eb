"""Two small models to tune and to test with (usable as ``--model`` factories).

* :func:`small_convnet`: three conv blocks (conv 3x3, batch norm, ReLU), each a
  user-defined ``ConvBlock``, with max-pooling between them and a linear head.
  Input ``x: N,3,H,W``; output ``N,10``.
* :func:`small_transformer`: a stack of two pre-norm transformer blocks (layer
  norm, multi-head self-attention through ``F.scaled_dot_product_attention``,
  layer norm, GELU MLP) and a linear head.  Input ``x: N,T,64``; output ``N,T,64``.
* :func:`explicit_attention_transformer`: the same with attention written out as
  ``softmax(q @ k^T * scale) @ v``, so matmul and softmax operators appear.

Weights are initialised from a fixed seed, so every call returns the same model.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ConvBlock", "TransformerBlock", "small_convnet", "small_transformer",
           "explicit_attention_transformer"]


class ConvBlock(nn.Module):
    """conv 3x3 (padding 1) -> batch norm -> ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ConvNet(nn.Module):
    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.blocks = nn.Sequential(ConvBlock(3, width), nn.MaxPool2d(2),
                                    ConvBlock(width, 2 * width), nn.MaxPool2d(2),
                                    ConvBlock(2 * width, 4 * width))
        self.head = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x).mean(dim=(2, 3)))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(ln1(x)); x + mlp(ln2(x))."""

    def __init__(self, dim: int, heads: int, explicit: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.explicit = explicit
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        if self.explicit:
            scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(d // self.heads))
            y = torch.softmax(scores, dim=-1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Transformer(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4, depth: int = 2,
                 explicit: bool = False) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, explicit) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(x)))


def small_convnet() -> nn.Module:
    """The conv net (input ``x: N,3,H,W``)."""
    torch.manual_seed(0)
    return ConvNet()


def small_transformer() -> nn.Module:
    """The transformer block stack with SDPA (input ``x: N,T,64``)."""
    torch.manual_seed(0)
    return Transformer()


def explicit_attention_transformer() -> nn.Module:
    """The transformer block stack with attention written out (input ``x: N,T,64``)."""
    torch.manual_seed(0)
    return Transformer(explicit=True)
