"""Test collection: which test files share a spawned job, and which worker runs them.

``./run.sh test`` runs three test files at a time on two cores (pytest-xdist, ``--dist loadgroup``).
Every test is put in its file's group, so a file's module-scoped jobs run once, in
one worker; the files of :data:`TWO_RANK_JOBS` form one group, sharing one spawned
2-rank gloo job (:func:`tests.distributed.shared_two_rank_job`), and the aoe_full
files one group, so that one worker pays Inductor's first compile in a process
(its C++ toolchain's warm-up, seconds on a cold cache).  Groups are handed
to the workers longest first (:data:`LONGEST_FIRST`, from ``--durations``), so that
all finish at about the same time.
"""
from __future__ import annotations

import os

import pytest
import torch

from tests.distributed import shared_two_rank_job

# tests/compat runs only in the compatibility pass's venvs (./run.sh compat)
collect_ignore = [] if os.environ.get("GDAT_COMPAT_TORCH") else ["compat"]

# job name: "module:function", each function(rank, world_size, work_dir) -> results
TWO_RANK_JOBS = {
    "dropin": "tests.test_ddp_dropin:_all_configurations",
    "plan": "tests.test_plan:_plan_jobs",
    "profiling": "tests.test_profiling:_two_rank_jobs",
    "compression": "tests.test_compression:_job",
}
_SHARING = {spec.split(":")[0].rsplit(".", 1)[-1] for spec in TWO_RANK_JOBS.values()}
# the groups whose spawned jobs take longest, longest first; the others follow in file order
LONGEST_FIRST = ["aoe", "test_gdat_run", "test_torch_ddp_suite", "test_reliability", "test_frameworks", "test_drift",
                 "test_multinode", "test_compile", "two_ranks", "test_run_outcome", "test_compose", "test_worker_exit"]


def _group(item: pytest.Item) -> str:
    module = item.module.__name__.rsplit(".", 1)[-1]
    if module in _SHARING:
        return "two_ranks"
    return "aoe" if module.startswith("test_aoe_") else module


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {group: k for k, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_group(item), len(rank)))  # stable: file order otherwise
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))


@pytest.fixture(autouse=True)
def _keep_threads():
    """``aoe --threads 1`` sets torch's thread count for the whole test process: every
    test gets back the count it started with (the aoe_full files share one worker)."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def two_rank_work(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("two_ranks"))


@pytest.fixture(scope="session")
def two_rank_job(two_rank_work):
    """``two_rank_job(name)``: job ``name`` of :data:`TWO_RANK_JOBS`, per rank."""
    return lambda name: shared_two_rank_job(name, TWO_RANK_JOBS, two_rank_work)
