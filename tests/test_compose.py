"""``--gdat-aoe-bank``: aoe_full's operator bank applied before DDP wraps the model."""
from __future__ import annotations

import json
import os

from gdat.bank.store import KnowledgeBase
from tests.helpers import REPO, run_cmd

FACTORY = """
from gdat.demo.models import build_model


def build():
    return build_model("conv", "tiny")
"""

# a plain DDP script that reports whether the model it wrapped runs aoe_full's tuned forward
TRAIN = """
import json, sys
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from gdat.demo.models import build_model, loss_fn, synthetic_batch
from gdat.worker import end_process

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
model = build_model("conv", "tiny")
ddp = DDP(model)
opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
losses = []
for step in range(35):
    x, y = synthetic_batch("conv", model, rank, step, 4)
    opt.zero_grad()
    loss = loss_fn("conv", ddp(x), y)
    loss.backward()
    opt.step()
    losses.append(loss.item())
if rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump({"losses": losses, "aoe_tuned_forward": "_aoe_tuning" in vars(model)}, f)
del ddp, opt
dist.barrier()
dist.destroy_process_group()
end_process(0)
"""


def _adopt_verified_strategies(bank_root: str) -> int:
    """Make every operator entry use a strategy the aoe run verified equivalent
    (status ``ok``), so that the bank certainly holds something to apply (on a
    small model the default often wins); returns how many entries changed."""
    kb = KnowledgeBase(bank_root, "opat")
    changed = 0
    for key, payload in list(kb.entries()):
        verified = [s for s, row in payload.get("candidates", {}).items() if s != "eager" and row["status"] == "ok"]
        if verified:
            kb.put(key, {**payload, "strategy": verified[0]})
            changed += 1
    return changed


def test_operator_bank_then_gradient_tuning(tmp_path):
    # the bank applies to a run with the thread count it was tuned at: the script trains on 1 thread
    source = tmp_path / "convnet.py"
    source.write_text(FACTORY)
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    env = {"TUNE_BANK_PATH": str(tmp_path / "bank"), "PYTHONPATH": REPO}
    aoe = run_cmd(["aoe", "--job_type", "2", "--scene", "train", "--model", f"{source}:build",
                   "--input_shape", "x:4,3,32,32", "--candidates", "channels_last,no_mkldnn",
                   "--threads", "1", "--rounds", "5", "--output", str(tmp_path / "aoe")], cwd=str(tmp_path), env=env)
    assert aoe.returncode == 0, aoe.stderr[-2000:]
    assert "Aoe process finished" in aoe.stdout + aoe.stderr
    assert _adopt_verified_strategies(str(tmp_path / "bank")) >= 1
    out = tmp_path / "run.json"
    run = run_cmd(["gdat-run", "--gdat-aoe-bank", "--gdat-work-path", str(tmp_path / "w"), "--gdat-comm-budget-s",
                   "0.3", "--nproc-per-node", "2", str(script), str(out)],
                  cwd=str(tmp_path), env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    done = json.loads(out.read_text())
    assert done["aoe_tuned_forward"], "the bank was applied to the model DDP wraps"
    assert run.stderr.count("gdat: --gdat-aoe-bank: applied ") == 1, run.stderr[-3000:]
    assert len(done["losses"]) == 35 and all(x == x for x in done["losses"])
    assert "tune: baseline" in run.stderr  # and gdat tuned its gradients
    assert os.listdir(tmp_path / "w")
