"""Run a function on N real gloo ranks (torch.multiprocessing, spawn) and collect results."""
from __future__ import annotations

import contextlib
import gc
import os
import pickle
import socket
import tempfile
import traceback
from typing import Any, Callable, Iterator

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable[..., Any], world_size: int, port: int, out_dir: str, args: tuple) -> None:
    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result: Any = ("ok", fn(rank, world_size, *args))
    except BaseException:
        result = ("error", traceback.format_exc())
    with open(os.path.join(out_dir, f"{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)
    gc.collect()  # free DDP reducers while their process group still exists
    if result[0] == "ok":
        dist.barrier()
    dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world_size: int = 2, args: tuple = ()) -> list[Any]:
    """``fn(rank, world_size, *args)`` on each rank of a fresh gloo group; returns
    the per-rank results, re-raising the first rank's exception with its traceback."""
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_entry, args=(fn, world_size, free_port(), out, args), nprocs=world_size,
                           start_method="spawn")
        results = []
        for r in range(world_size):
            with open(os.path.join(out, f"{r}.pkl"), "rb") as f:
                results.append(pickle.load(f))
    for r, (status, value) in enumerate(results):
        if status != "ok":
            raise AssertionError(f"rank {r} failed:\n{value}")
    return [v for _, v in results]


@contextlib.contextmanager
def one_rank_group() -> Iterator[None]:
    """A 1-rank gloo group in this process (an in-memory store), for what a job does at
    DDP construction without spawning one."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        gc.collect()
        dist.destroy_process_group()


def _shared_jobs(rank: int, world_size: int, jobs: dict[str, str], work: str) -> dict[str, Any]:
    """Run every job ``module:function`` in turn on this rank; a job that raises
    gives its traceback instead of a result (the others still run)."""
    import importlib

    found: dict[str, Any] = {}
    for name, spec in jobs.items():
        module, function = spec.split(":")
        try:
            found[name] = ("ok", getattr(importlib.import_module(module), function)(
                rank, world_size, os.path.join(work, name)))
        except BaseException:
            found[name] = ("error", traceback.format_exc())
        dist.barrier()
    return found


_shared: dict[str, list[Any]] = {}


def shared_two_rank_job(name: str, jobs: dict[str, str], work: str) -> list[Any]:
    """Job ``name``'s per-rank results from one 2-rank gloo job running every job
    of ``jobs`` (``name: "module:function"``, each called ``function(rank,
    world_size, work_dir)``), spawned once per process: the modules that share it
    pay for one start of two ranks.  A job that raised re-raises here with its
    traceback."""
    if not _shared:
        for r, results in enumerate(run_ranks(_shared_jobs, 2, (jobs, work))):
            for job, outcome in results.items():
                _shared.setdefault(job, []).append(outcome)
    per_rank = _shared[name]
    for r, (status, value) in enumerate(per_rank):
        if status != "ok":
            raise AssertionError(f"rank {r} failed in {name}:\n{value}")
    return [value for _, value in per_rank]

