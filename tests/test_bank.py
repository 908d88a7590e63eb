"""gdat's knowledge base: the key, the lookup, and AOE's outcome rule under the lock."""
from __future__ import annotations

import json
import multiprocessing
import os
import warnings

import pytest

from gdat.bank.plans import BankedPlan, bank_key, keep, link_class, lookup
from gdat.bank.store import BankWarning, KnowledgeBase, RepoSummary, key_id, settle
from gdat.core.layout import GradientLayout, ParamInfo
from gdat.core.plan import BucketPlan
from gdat.decide.windows import WindowStats

PARAMS = tuple(ParamInfo(i, f"p{i}", (8, 4), "float32", 128) for i in range(4))
MODEL = GradientLayout.of(PARAMS)
READY = MODEL.reordered((3, 2, 1, 0))
BANDWIDTH = 1e9
HW = {"device_type": "cpu", "cpu": "test cpu", "cpus": "2"}


def key_for(params=PARAMS, world=2, bandwidth=BANDWIDTH, **changes):
    args = dict(world_size=world, local_world_size=2, nodes=1, backend="gloo", device_type="cpu",
                torch_version="2.13.0", hardware=HW, ddp_options={"static_graph": False,
                                                                  "gradient_as_bucket_view": False})
    args.update(changes)
    return bank_key(params, bandwidth_bytes_per_s=bandwidth, **args)


def plan(ends, label):
    return BucketPlan.from_ends(READY, ends, label)


def entry(p, result_ms, bandwidth=BANDWIDTH, baseline_ms=10.0):
    return BankedPlan(p, baseline_ms, result_ms, bandwidth, 0.0)


def window(ms):
    return WindowStats((ms / 1e3,) * 5)


def test_the_key_holds_everything_that_invalidates_a_plan():
    key = key_for()
    assert key["params"] == [[[8, 4], "float32"]] * 4
    assert key["link_class"] == link_class(BANDWIDTH) == 29  # floor(log2(1e9))
    assert key_for() == key and key_id(key_for()) == key_id(key)
    other_model = tuple(ParamInfo(i, f"p{i}", (8, 8), "float32", 256) for i in range(4))
    for changed in (key_for(params=other_model), key_for(world=4), key_for(bandwidth=4e9), key_for(nodes=2),
                    key_for(backend="nccl"), key_for(torch_version="2.14.0"),
                    key_for(hardware={**HW, "cpu": "other"}),
                    key_for(ddp_options={"static_graph": True, "gradient_as_bucket_view": False})):
        assert key_id(changed) != key_id(key)
    assert list(key_for(hardware={"cpus": "2", "cpu": "x", "device_type": "cpu"})["hardware"]) == \
        ["cpu", "cpus", "device_type"]


def test_lookup_finds_the_entry_and_its_layout(tmp_path):
    bank = KnowledgeBase(str(tmp_path), "gdat")
    stored = plan([1, 4], "optimal")
    bank.put(key_for(), entry(stored, 8.0).to_payload())
    hit = lookup(bank, key_for(), BANDWIDTH, MODEL)
    assert hit is not None and hit.key == key_for() and hit.entry.plan == stored
    assert hit.layout.order == stored.param_order == (3, 2, 1, 0)
    assert hit.layout.nbytes == (128,) * 4


def test_lookup_tolerates_a_neighbouring_link_class_within_the_bandwidth_tolerance(tmp_path):
    bank = KnowledgeBase(str(tmp_path), "gdat")
    tuned_at = 0.99e9  # class 29; measured now 1.1e9: class 30
    bank.put(key_for(bandwidth=tuned_at), entry(plan([4], "one"), 8.0, bandwidth=tuned_at).to_payload())
    hit = lookup(bank, key_for(bandwidth=1.1e9), 1.1e9, MODEL)
    assert hit is not None and hit.key["link_class"] == 29
    assert lookup(bank, key_for(bandwidth=1.6e9), 1.6e9, MODEL) is None  # same class 30, ratio > 1.5


def test_lookup_skips_entries_that_do_not_fit_and_warns(tmp_path):
    bank = KnowledgeBase(str(tmp_path), "gdat")
    other = BucketPlan.from_ends(GradientLayout((0, 1, 2, 3), (64,) * 4, ("float32",) * 4), [4], "other model")
    bank.put(key_for(), entry(other, 8.0).to_payload())
    with pytest.warns(BankWarning, match="claims 256 bytes"):
        assert lookup(bank, key_for(), BANDWIDTH, MODEL) is None
    bank.put(key_for(), {"plan": "not a plan"})
    with pytest.warns(BankWarning, match="malformed GDAT entry"):
        assert lookup(bank, key_for(), BANDWIDTH, MODEL) is None
    assert lookup(KnowledgeBase(str(tmp_path / "empty"), "gdat"), key_for(), BANDWIDTH, MODEL) is None


USER = plan([2, 4], "user configuration")
FAST = plan([1, 4], "optimal")
FASTER = plan([1, 2, 4], "optimal-max4")
RACERS = {"fast": (FAST, 7.0), "slow": (plan([3, 4], "ddp-16MiB"), 9.0)}


def stored_plan(bank):
    return BucketPlan.from_dict(bank.get(key_for())["plan"])


@pytest.mark.parametrize("won", [True, False])
def test_an_empty_bank_gets_the_winner_or_the_verdict(tmp_path, won):
    bank = KnowledgeBase(str(tmp_path), "gdat")
    winner = FAST if won else USER
    settled = keep(bank, key_for(), entry(winner, 8.0 if won else 10.0), won, MODEL,
                   [(USER, window(10.0)), (FAST, window(8.0))], window(8.0) if won else None)
    assert (settled.outcome, settled.found, settled.written) == ("add" if won else "unsatisfied", None, True)
    assert stored_plan(bank) == winner


def test_a_stored_plan_measured_in_this_run_is_replaced_only_when_beaten(tmp_path):
    bank = KnowledgeBase(str(tmp_path), "gdat")
    bank.put(key_for(), entry(FAST, 8.0).to_payload())
    measured = [(USER, window(10.0)), (FASTER, window(7.0)), (FAST, window(7.5))]
    settled = keep(bank, key_for(), entry(FASTER, 7.0), True, MODEL, measured, window(7.0))
    assert settled.outcome == "update" and settled.written and stored_plan(bank) == FASTER
    bank.put(key_for(), entry(FAST, 8.0).to_payload())
    close = [(USER, window(10.0)), (FASTER, window(7.48)), (FAST, window(7.5))]  # within the 1% floor
    settled = keep(bank, key_for(), entry(FASTER, 7.48), True, MODEL, close, window(7.48))
    assert settled.outcome == "reserved" and not settled.written and stored_plan(bank) == FAST


def test_the_stored_plan_winning_again_is_reserved_not_rewritten(tmp_path):
    bank = KnowledgeBase(str(tmp_path), "gdat")
    bank.put(key_for(), entry(FAST, 8.0).to_payload())
    before = os.stat(bank.path_for(key_for())).st_mtime_ns
    settled = keep(bank, key_for(), entry(BucketPlan(FAST.buckets, "stored"), 7.0), True, MODEL,
                   [(USER, window(10.0)), (FAST, window(7.0))], window(7.0))
    assert settled.outcome == "reserved" and not settled.written
    assert os.stat(bank.path_for(key_for())).st_mtime_ns == before


def test_a_verdict_of_the_user_configuration_is_beaten_by_any_winner(tmp_path):
    bank = KnowledgeBase(str(tmp_path), "gdat")
    bank.put(key_for(), entry(USER, 10.0).to_payload())  # an earlier run's "unsatisfied" verdict
    settled = keep(bank, key_for(), entry(FAST, 8.0), True, MODEL, [(USER, window(10.0)), (FAST, window(8.0))],
                   window(8.0))
    assert settled.outcome == "update" and stored_plan(bank) == FAST
    settled = keep(bank, key_for(), entry(USER, 10.0), False, MODEL, [(USER, window(10.0))], None)
    assert settled.outcome == "reserved" and stored_plan(bank) == FAST


def test_an_unmeasured_stored_plan_is_compared_by_its_recorded_step(tmp_path):
    bank = KnowledgeBase(str(tmp_path), "gdat")
    bank.put(key_for(), entry(FASTER, 7.0).to_payload())  # stored by another job meanwhile
    measured = [(USER, window(10.0)), (FAST, window(8.0))]
    settled = keep(bank, key_for(), entry(FAST, 8.0), True, MODEL, measured, window(8.0))
    assert settled.outcome == "reserved" and settled.found["result_ms"] == 7.0 and stored_plan(bank) == FASTER
    bank.put(key_for(), entry(FASTER, 9.0).to_payload())
    settled = keep(bank, key_for(), entry(FAST, 8.0), True, MODEL, measured, window(8.0))
    assert settled.outcome == "update" and stored_plan(bank) == FAST


def test_an_unusable_stored_entry_counts_as_absent(tmp_path):
    bank = KnowledgeBase(str(tmp_path), "gdat")
    bank.put(key_for(), entry(FASTER, 1.0, bandwidth=BANDWIDTH * 4).to_payload())  # another link
    settled = keep(bank, key_for(), entry(FAST, 8.0), True, MODEL, [(USER, window(10.0))], window(8.0))
    assert (settled.outcome, settled.found) == ("add", None) and stored_plan(bank) == FAST


def test_the_shared_rule_counts_exactly_one_outcome(tmp_path):
    bank = KnowledgeBase(str(tmp_path), "opat")
    first = settle(bank, {"op": 1}, {"strategy": "eager"}, False, lambda stored: True)
    again = settle(bank, {"op": 1}, {"strategy": "fast"}, True, lambda stored: stored["strategy"] != "fast")
    kept = settle(bank, {"op": 1}, {"strategy": "slow"}, True, lambda stored: False)
    assert [s.outcome for s in (first, again, kept)] == ["unsatisfied", "update", "reserved"]
    assert bank.get({"op": 1}) == {"strategy": "fast"}
    summary = RepoSummary()
    for s in (first, again, kept):
        summary.count(s.outcome)
    assert summary.to_dict()["total_num"] == 3


def test_entries_lists_usable_entries_and_warns_about_the_rest(tmp_path):
    bank = KnowledgeBase(str(tmp_path), "opat")
    bank.put({"op": 1}, {"strategy": "fast"})
    bank.put({"op": 2}, {"strategy": "eager"})
    moved = bank.path_for({"op": 2})
    os.replace(moved, os.path.join(bank.directory, "0" * 32 + ".json"))  # a file renamed by hand
    with open(os.path.join(bank.directory, "f" * 32 + ".json"), "w") as f:
        f.write("{not json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = list(bank.entries())
    assert found == [({"op": 1}, {"strategy": "fast"})]
    assert sum(issubclass(w.category, BankWarning) for w in caught) == 2


RACE_ROUNDS = 12


def _racer(root, name, barrier, out):
    """One job keeping its plan for the same keys as another job, at the same moment
    (neither measured the other's plan)."""
    bank = KnowledgeBase(root, "gdat")
    mine, result_ms = RACERS[name]
    for r in range(RACE_ROUNDS):
        key = key_for(world=100 + r)
        barrier.wait()
        settled = keep(bank, key, entry(mine, result_ms), True, MODEL,
                       [(USER, window(10.0)), (mine, window(result_ms))], window(result_ms))
        summary = RepoSummary()
        summary.count(settled.outcome)
        found = None if settled.found is None else BucketPlan.from_dict(settled.found["plan"]).label
        out.put((r, name, found, settled.written, summary.to_dict()))


def test_two_jobs_racing_to_keep_better_and_worse_plans_keep_the_better(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    jobs = [ctx.Process(target=_racer, args=(str(tmp_path), name, barrier, out)) for name in RACERS]
    for p in jobs:
        p.start()
    results = [out.get(timeout=300) for _ in range(2 * RACE_ROUNDS)]
    for p in jobs:
        p.join(120)
        assert p.exitcode == 0
    bank = KnowledgeBase(str(tmp_path), "gdat")
    for r in range(RACE_ROUNDS):
        rows = {name: (found, written, summary) for rr, name, found, written, summary in results if rr == r}
        assert set(rows) == {"fast", "slow"}
        firsts = [name for name, (found, _, _) in rows.items() if found is None]
        assert len(firsts) == 1, "exactly one job found the key empty under the lock"
        first, second = firsts[0], "slow" if firsts[0] == "fast" else "fast"
        assert rows[first][1] and rows[first][2]["repo_add_num"] == 1
        found, written, summary = rows[second]
        assert found == RACERS[first][0].label  # it found the other job's plan
        # the better plan replaces the worse one; the worse one never replaces the better
        expected = "repo_update_num" if second == "fast" else "repo_reserved_num"
        assert summary[expected] == 1 and summary["total_num"] == 1
        assert written == (second == "fast")
        assert BucketPlan.from_dict(bank.get(key_for(world=100 + r))["plan"]) == FAST
    assert not [f for f in os.listdir(bank.directory) if f.startswith(".tmp-")]
    assert all(json.loads(open(os.path.join(bank.directory, f)).read())
               for f in os.listdir(bank.directory) if f.endswith(".json"))
