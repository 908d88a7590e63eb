"""How a training process tells ``gdat-run`` why it stopped, so a job ends with one line.

``gdat-run`` makes a private directory and names it in ``GDAT_END_DIR``.  A
training process that stops on a :class:`~gdat.errors.GdatError` (bad input such
as a plan for another model, or ranks built with different models) or on Ctrl-C
writes its one-line message to ``<dir>/<rank>`` instead of printing it, and exits
with status 2 (bad input) or 130 (interrupted).  ``gdat-run`` then prints the
message of the lowest rank once and exits with that status.

torchrun's agent logs its own lines around such an ending: a worker "failed
(exitcode: 2)", the SIGTERM or SIGINT it sends to the others, the "death signal"
it received, and it prints a failure summary.  Those say again what the one line
says, so :class:`AgentChatterFilter` drops them, and only them; every other
failure (the script's own exception, a crash) is reported by torchrun as usual.
Without ``GDAT_END_DIR`` (a worker started by the MPI launcher, or by hand) the
message is printed on stderr.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass

__all__ = ["ENV", "JobEnd", "report", "collect", "end_directory", "AgentChatterFilter", "AGENT_LOGGERS"]

ENV = "GDAT_END_DIR"
AGENT_LOGGERS = ("torch.distributed.elastic.multiprocessing.api", "torch.distributed.elastic.agent.server.api")
_CHATTER = re.compile(r"failed \(exitcode: (2|130|-2|-15)\)|closing signal|death signal")


@dataclass(frozen=True)
class JobEnd:
    """Why a rank stopped: its exit ``status`` and one-line ``message``."""

    rank: int
    status: int
    message: str


def report(status: int, message: str) -> None:
    """Record why this process stops (see the module docstring); the caller exits
    with ``status`` afterwards."""
    directory = os.environ.get(ENV)
    rank = int(os.environ.get("RANK", "0"))
    if directory and os.path.isdir(directory):
        path = os.path.join(directory, str(rank))
        try:
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write(f"{status}\n{message}")
            os.replace(path + ".tmp", path)
            return
        except OSError:
            pass
    print(message, file=sys.stderr, flush=True)


def collect(directory: str) -> JobEnd | None:
    """The ending reported by the lowest rank in ``directory``, if any."""
    found = []
    for name in os.listdir(directory):
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                status, message = f.read().split("\n", 1)
            found.append(JobEnd(int(name), int(status), message.strip()))
        except (OSError, ValueError):
            continue
    return min(found, key=lambda e: e.rank) if found else None


class end_directory:
    """Context manager: a private ``GDAT_END_DIR`` for the job, and the agent's
    chatter filtered while it runs; removed afterwards."""

    def __enter__(self) -> str:
        self.path = tempfile.mkdtemp(prefix="gdat-end-")
        os.environ[ENV] = self.path
        self.filter = AgentChatterFilter(self.path)
        for name in AGENT_LOGGERS:
            logging.getLogger(name).addFilter(self.filter)
        return self.path

    def __exit__(self, *exc: object) -> None:
        for name in AGENT_LOGGERS:
            logging.getLogger(name).removeFilter(self.filter)
        os.environ.pop(ENV, None)
        shutil.rmtree(self.path, ignore_errors=True)


class AgentChatterFilter(logging.Filter):
    """Drops torchrun's agent lines that only repeat what gdat's one line says: the
    death signal it received (gdat-run reports the interrupt itself), and the exit
    statuses and closing signals of workers once one has ended through
    :func:`report` or a signal was received.  Everything else passes."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory
        self.signalled = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "death signal" in message:
            self.signalled = True
            return False
        if not _CHATTER.search(message):
            return True
        if self.signalled:
            return False
        try:
            return not any(name.isdigit() for name in os.listdir(self.directory))
        except OSError:
            return True
