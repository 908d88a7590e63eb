"""gdat-run across emulated nodes, through torchrun's own c10d rendezvous.

One 2-node x 1-rank job (each node its own namespace, hostname and gdat-run, 1 Gbit/s
links) runs under ``--max-restarts 1`` while node1's only rank kills itself at step
15: the restarted job tunes and reports 2 nodes.  Then a 1-node x 2-rank job of the
same world size, on a loopback of the same per-rank bandwidth, shares the knowledge
base: it must not take the 2-node entry.
"""
from __future__ import annotations

import glob
import json
import os

import pytest

from launch.cluster import emulated_cluster, run_on_nodes
from launch.netns import namespace_unavailable_reason
from tests.helpers import BIN, REPO

UNAVAILABLE = namespace_unavailable_reason()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"testbed unavailable: {UNAVAILABLE}")

SCRIPT = os.path.join(REPO, "tests", "scripts", "train_faults.py")
STEPS = 45


def _job(tmp, name, nodes, per_node, rate, intra, *extra):
    """gdat-run on every emulated node; returns (statuses, log text, reports)."""
    work = tmp / name
    cmd = [os.path.join(BIN, "gdat-run"), "--gdat-work-path", str(work), "--gdat-comm-budget-s", "0.5",
           "--nnodes", str(nodes), "--nproc-per-node", str(per_node), "--rdzv-backend", "c10d",
           "--rdzv-endpoint", "node0:29400", "--rdzv-id", name, *extra]
    log = tmp / f"{name}.log"
    with emulated_cluster(nodes, rate, intra) as cluster, open(log, "w") as out:
        codes = run_on_nodes(cluster, cmd, env={"TUNE_BANK_PATH": str(tmp / "bank")}, timeout_s=240,
                             stdout=out, stderr=out)
    reports = [json.loads(open(p).read()) for p in sorted(glob.glob(str(work / "aoe_result_gdat_*.json")))]
    return codes, log.read_text(), reports


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multinode")
    two = _job(tmp, "two", 2, 1, "1gbit", None, "--max-restarts", "1", SCRIPT, "--steps", str(STEPS),
               "--kill-rank", "1", "--kill-step", "15", "--out", str(tmp / "two.json"))
    one = _job(tmp, "one", 1, 2, "1gbit", "2gbit", SCRIPT, "--steps", "40")
    return {"two": two, "one": one, "tmp": tmp}


def test_two_node_job_restarts_after_a_node_dies_tunes_and_reports_two_nodes(jobs):
    codes, log, reports = jobs["two"]
    assert codes == [0, 0], log[-4000:]
    assert log.count("tune: knowledge base miss") == 2, "tuning restarted with the job"
    assert len(reports) == 1, "only the restarted attempt finished tuning and reported"
    g = reports[0]["GDAT"]
    assert g["gdat_tuning_result"] in ("tuning successful", "tuning unsatisfied")
    assert g["topology"]["nodes"] == 2 and g["topology"]["ranks_per_node"] == 1
    assert g["topology"]["world_size"] == 2
    assert len(json.loads((jobs["tmp"] / "two.json").read_text())["losses"]) == STEPS


def test_a_two_node_bank_entry_is_not_used_by_a_one_node_job_of_the_same_world_size(jobs):
    codes, log, reports = jobs["one"]
    assert codes == [0], log[-4000:]
    assert "tune: knowledge base miss" in log and "knowledge base hit" not in log
    assert reports[-1]["GDAT"]["topology"]["nodes"] == 1
    entries = [json.loads(open(p).read()) for p in glob.glob(str(jobs["tmp"] / "bank" / "gdat" / "*.json"))]
    assert len(entries) == 2
    keys = {e["key"]["nodes"]: e["key"] for e in entries}
    assert set(keys) == {1, 2}
    assert (keys[2]["local_world_size"], keys[1]["local_world_size"]) == (1, 2)
    # nothing but the layout tells them apart: the same model, world size and link
    differ = {k for k in keys[1] if keys[1][k] != keys[2][k]}
    assert differ <= {"nodes", "local_world_size", "link_class"}
    assert abs(keys[1]["link_class"] - keys[2]["link_class"]) <= 1
    rates = [e["payload"]["bandwidth_bytes_per_s"] for e in entries]
    assert max(rates) / min(rates) < 1.5, "the lookup's bandwidth tolerance would have matched"
