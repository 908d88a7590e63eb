"""Launch under MPI: ``mpiexec -n N gdat-run --gdat-launcher mpi SCRIPT ...``.

Each MPI process is one training rank (torchrun's process management is not used):

* rank and world size come from ``MPI.COMM_WORLD``; the local rank and the number
  of ranks on this node from a ``COMM_TYPE_SHARED`` split;
* rank 0 picks the rendezvous address (``MASTER_ADDR`` if set, else its host's
  address) and a free port (``MASTER_PORT`` if set) and broadcasts both;
* the usual variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) are set, and the script
  runs in this process through :mod:`gdat.worker`, so its
  ``init_process_group(backend)`` with the default ``env://`` works unchanged.

Slurm: ``srun --ntasks=N --mpi=pmi2 gdat-run --gdat-launcher mpi train.py`` (or
``pmix``, whichever your Slurm offers), since Slurm starts one task per rank as
``mpiexec`` does.  torchrun's process options (``--nproc-per-node``, ``--nnodes``,
rendezvous, restarts) do not apply under MPI and are ignored with a notice.
"""
from __future__ import annotations

import argparse
import os
import socket

from gdat.errors import UsageError

__all__ = ["run_under_mpi", "rendezvous_env"]

_TORCHRUN_ONLY = ("nproc_per_node", "nnodes", "rdzv_endpoint", "max_restarts")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _host_address() -> str:
    name = socket.gethostname()
    try:
        return socket.gethostbyname(name)
    except OSError:
        return "127.0.0.1"


def rendezvous_env(comm) -> dict[str, str]:
    """The torch.distributed environment for this MPI process (a collective)."""
    from mpi4py import MPI

    rank, size = comm.Get_rank(), comm.Get_size()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    chosen = None
    if rank == 0:
        chosen = (os.environ.get("MASTER_ADDR") or _host_address(),
                  os.environ.get("MASTER_PORT") or str(_free_port()))
    addr, port = comm.bcast(chosen, root=0)
    env = {"RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_RANK": str(local.Get_rank()),
           "LOCAL_WORLD_SIZE": str(local.Get_size()), "GROUP_RANK": "0",
           "MASTER_ADDR": addr, "MASTER_PORT": port}
    local.Free()
    return env


def run_under_mpi(args: argparse.Namespace) -> int:
    """Run this MPI process's rank of the job described by ``args`` (gdat-run's
    parsed arguments, already pointing at :mod:`gdat.worker`)."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise UsageError("--gdat-launcher mpi needs mpi4py (pip install 'gdat[mpi]')") from None
    from gdat import worker
    from gdat.core import log

    comm = MPI.COMM_WORLD
    env = rendezvous_env(comm)
    os.environ.update(env)
    defaults = {"nproc_per_node": "1", "nnodes": "1:1", "rdzv_endpoint": "", "max_restarts": 0}
    ignored = [f"--{k.replace('_', '-')}" for k in _TORCHRUN_ONLY if getattr(args, k, None) != defaults[k]]
    if ignored:
        log.info(f"mpi launcher: ignoring torchrun-only options {', '.join(ignored)}")
    log.info(f"mpi launcher: {env['WORLD_SIZE']} ranks, rendezvous {env['MASTER_ADDR']}:{env['MASTER_PORT']}")
    worker.main(args.training_script_args)
    return 0
