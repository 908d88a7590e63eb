"""PyTorch's own DDP tests, run with gdat's DDP substituted for stock DDP.

``python -m tests.torch_ddp_suite [--stock] [--spawn] [TEST_NAME ...]`` runs the DDP
tests of ``torch.testing._internal.distributed.distributed_test`` (class
``DistributedTest._DistTestBase``, shipped in the torch wheel) the way PyTorch's
``test/distributed/test_distributed_spawn.py`` runs them: ``BACKEND=gloo``,
``WORLD_SIZE=2``, one process per rank for each test.  The ranks are forked from
this runner, which has imported the suite already (about 3 s less per test and
rank than spawning, where each rank imports torch and the suite again); with
``--spawn`` they are spawned, as PyTorch's file does.  Unless ``--stock`` is given,
:func:`gdat.worker.install` runs before the suite is imported, as ``gdat-run`` does
before a script, so every ``DistributedDataParallel`` the tests build is gdat's
subclass in its default mode (tune); spawned ranks import this module again, so
they install it too.

Without test names, it runs :data:`CPU_DDP_TESTS`: the suite's DDP tests that run
on gloo with CPU tensors (the others need GPUs or another backend and skip).
Prints one ``RESULT name outcome`` line per test and exits 0 only if none failed.
"""
from __future__ import annotations

import os
import sys
import tempfile
import unittest

CPU_DDP_TESTS = (
    "test_DistributedDataParallelCPU",
    "test_DistributedDataParallelCPU_grad_is_view",
    "test_DistributedDataParallel_requires_grad",
    "test_ddp_logging_data_cpu",
    "test_dump_DDP_relevant_env_vars",
    "test_ddp_create_graph",
)

STOCK = "--stock" in sys.argv[1:]
SPAWN = "--spawn" in sys.argv[1:]
RUNNING = __name__ in ("__main__", "__mp_main__")  # the runner, or one of its spawned ranks

if RUNNING:  # importing CPU_DDP_TESTS alone changes nothing in the importing process
    os.environ.setdefault("BACKEND", "gloo")
    os.environ.setdefault("WORLD_SIZE", "2")
    if not STOCK:
        # gdat's default mode (tune) with a short allreduce microbenchmark; its bank and
        # reports go to a directory of this run, not the user's.
        if "GDAT_TORCH_SUITE_DIR" not in os.environ:
            os.environ["GDAT_TORCH_SUITE_DIR"] = tempfile.mkdtemp(prefix="gdat_torch_suite_")
        os.environ.setdefault("TUNE_BANK_PATH", os.path.join(os.environ["GDAT_TORCH_SUITE_DIR"], "bank"))
        os.environ.setdefault("GDAT_WORK_PATH", os.path.join(os.environ["GDAT_TORCH_SUITE_DIR"], "work"))
        os.environ.setdefault("GDAT_COMM_BUDGET_S", "0.2")
        import gdat.worker

        gdat.worker.install()

    from torch.testing._internal.distributed.distributed_test import (  # noqa: E402  (after install)
        DistributedTest,
        TestDistBackend,
    )

    class TestDistBackendWithSpawn(TestDistBackend, DistributedTest._DistTestBase):
        """PyTorch's ``test_distributed_spawn.py`` class."""

        def setUp(self) -> None:
            super().setUp()
            if SPAWN:
                self._spawn_processes()
            else:
                import torch.multiprocessing

                self._start_processes(torch.multiprocessing.get_context("fork").Process)


def _check_substituted() -> None:
    import torch.nn.parallel
    from torch.testing._internal.distributed import distributed_test

    from gdat.ddp import DistributedDataParallel

    for where in (torch.nn.parallel.DistributedDataParallel, distributed_test.DistributedDataParallel):
        if where is not DistributedDataParallel:
            raise SystemExit("gdat's DDP was not substituted")


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("--")] or list(CPU_DDP_TESTS)
    if not STOCK:
        _check_substituted()
    suite = unittest.TestSuite(TestDistBackendWithSpawn(n) for n in names)
    result = unittest.TextTestRunner(verbosity=1, stream=sys.stderr).run(suite)
    outcome = {n: "passed" for n in names}
    for case, _ in result.failures + result.errors:
        outcome[case._testMethodName] = "failed"
    for case, _ in result.skipped:
        outcome[case._testMethodName] = "skipped"
    for n in names:
        print(f"RESULT {n} {outcome[n]}", flush=True)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
