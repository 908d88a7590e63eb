"""Shared pieces of the benchmarks: launching their ranks, and a timed training loop."""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Sequence

import torch
import torch.distributed as dist

from gdat.demo.models import build_model, loss_fn, synthetic_batch


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The hidden options a benchmark script gets when it runs as one of the ranks."""
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)


def launch_ranks(script: str, port: int, worker_args: Sequence[str], net: Any = None,
                 env: dict[str, str] | None = None) -> None:
    """Run ``script --worker worker_args`` on 2 ranks with torchrun, inside the
    testbed ``net`` when given."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           os.path.abspath(script), "--worker", *worker_args]
    subprocess.run(net.wrap(cmd) if net is not None else cmd, check=True, env=env)


class Trainer:
    """One rank's training loop on a built-in model, or on ``gpt2`` (the Hugging Face
    LM of ``benchmarks/hf_lm.py`` with AdamW, as that script trains it; ``size`` is
    ignored); ``step()`` runs one step and records its wall time (start of this step
    to start of the next)."""

    def __init__(self, model_name: str, size: str, batch: int, ddp_factory: Any) -> None:
        self.name, self.batch = model_name, batch
        if model_name == "gpt2":
            from benchmarks.hf_lm import gpt2_lm

            self.model = gpt2_lm()
        else:
            self.model = build_model(model_name, size)
        self.ddp = ddp_factory(self.model)
        self.opt = torch.optim.AdamW(self.ddp.parameters(), lr=1e-4) if model_name == "gpt2" else \
            torch.optim.SGD(self.ddp.parameters(), lr=1e-3, momentum=0.9)
        self.rank = dist.get_rank()
        self.k = 0
        self.starts: list[float] = []

    def _loss(self) -> torch.Tensor:
        if self.name == "gpt2":
            from benchmarks.hf_lm import token_batch

            ids = token_batch(self.model.config.vocab_size, self.batch, 64, self.k, self.rank)
            return self.ddp(input_ids=ids, labels=ids).loss
        x, y = synthetic_batch(self.name, self.model, self.rank, self.k, self.batch)
        return loss_fn(self.name, self.ddp(x), y)

    def step(self) -> None:
        self.starts.append(time.perf_counter())
        self.opt.zero_grad(set_to_none=True)
        self._loss().backward()
        self.opt.step()
        self.k += 1

    def window(self, n: int) -> list[float]:
        """Run ``n`` steps; their times on this rank (the first needs one more start)."""
        first = len(self.starts)
        for _ in range(n):
            self.step()
        self.starts.append(time.perf_counter())
        times = [b - a for a, b in zip(self.starts[first:], self.starts[first + 1:])]
        self.starts.pop()
        return times


def max_over_ranks(times: list[float]) -> list[float]:
    """Per step, the slowest rank's time (a collective)."""
    t = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3
