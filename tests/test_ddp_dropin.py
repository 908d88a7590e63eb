"""gdat's DDP is a drop-in for stock DDP, with and without tuning (real 2-rank gloo jobs)."""
from __future__ import annotations

import copy
import os
import pickle
import warnings

import pytest
import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel as StockDDP

from gdat.config import GdatConfig
from tests.distributed import run_ranks
from tests.models import batch, mlp

STEPS = 40


def _train(ddp, rank, accumulate=1):
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    for step in range(STEPS):
        opt.zero_grad()
        for micro in range(accumulate - 1):
            with ddp.no_sync():
                ddp(batch(rank, 100 * step + micro, 256)).pow(2).mean().backward()
        ddp(batch(rank, 100 * step + accumulate, 256)).pow(2).mean().backward()
        opt.step()
    return [p.detach().clone() for p in ddp.module.parameters()]


def _job(rank, world, work, options, accumulate, user_hook):
    from gdat.ddp import DistributedDataParallel

    os.environ["TUNE_BANK_PATH"] = os.path.join(work, "bank")
    config = GdatConfig(mode="tune", work_path=work, comm_budget_s=0.3)
    stock_model, gdat_model = mlp(256, 6), mlp(256, 6)
    stock = StockDDP(stock_model, **options)
    with warnings.catch_warnings(record=True):
        tuned = DistributedDataParallel(gdat_model, gdat_config=config, **options)
    if user_hook:
        stock.register_comm_hook(None, allreduce_hook)
        tuned.register_comm_hook(None, allreduce_hook)
    facts = {
        "isinstance": isinstance(tuned, StockDDP),
        "module": tuned.module is gdat_model,
        "state_dict": list(tuned.state_dict()) == list(stock.state_dict()),
        "controller": tuned._gdat is not None,
    }
    a, b = _train(stock, rank, accumulate), _train(tuned, rank, accumulate)
    facts["equal"] = all(torch.equal(x, y) for x, y in zip(a, b))
    facts["tuned"] = tuned._gdat is not None and tuned._gdat.done and bool(tuned._gdat.candidates)
    copied, unpickled = copy.deepcopy(tuned), pickle.loads(pickle.dumps(tuned))
    x = batch(rank, 999, 256)
    with torch.no_grad():
        facts["copies"] = all(type(c) is type(tuned) and c._gdat is None and torch.equal(c(x), tuned(x))
                              for c in (copied, unpickled))
    return facts


@pytest.mark.parametrize("options, accumulate, user_hook, expect_tuned", [
    ({}, 1, False, True),
    ({}, 3, False, True),                                   # gradient accumulation with no_sync()
    ({"static_graph": True, "gradient_as_bucket_view": True}, 1, False, True),
    ({"bucket_cap_mb": 0.05}, 1, True, False),               # user comm hook: runs, not tuned
    ({"find_unused_parameters": True}, 1, False, False),     # refused loudly, runs as stock DDP
])
def test_gdat_ddp_trains_exactly_like_stock_ddp(tmp_path, options, accumulate, user_hook, expect_tuned):
    for facts in run_ranks(_job, 2, (str(tmp_path), options, accumulate, user_hook)):
        assert facts["isinstance"] and facts["module"] and facts["state_dict"]
        assert facts["equal"], "parameters after 40 steps equal stock DDP's, bitwise"
        assert facts["tuned"] == expect_tuned
        assert facts["copies"], "deepcopy and pickle give a stock-behaving gdat DDP, as stock DDP does"
