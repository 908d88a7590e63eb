"""The optimizer's step in scene train (``aoe_full.optimizer_step``): torch's
foreach and fused implementations checked against the default one on a model's
parameters, banked, and set by ``gdat-run --gdat-aoe-bank`` on the optimizers a
script builds over the model's parameters, where the script chose none."""
import math

import pytest
import torch

import aoe_full.optimizer_step as optimizer_step
from aoe_full.apply import bank_transform
from aoe_full.measure import MeasureConfig
from aoe_full.optimizer_step import (CHANNELS_LAST, CONTIGUOUS, DEFAULT, OPTIMIZER_STEP, OPTIMIZERS, _key,
                                     banked_implementations, tune_optimizer_steps, use_implementations)
from aoe_full.whole_model import MIXED_CHANNELS_LAST, WHOLE_MODEL
from gdat.bank.store import KnowledgeBase

QUICK = MeasureConfig(rounds=3, warmup=1)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 8))


def _step(opt: torch.optim.Optimizer) -> None:
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.ones_like(p)
    opt.step()


def test_every_implementation_is_checked_against_the_default_and_the_verdicts_are_banked(tmp_path):
    model = _model()
    checks = tune_optimizer_steps(model, str(tmp_path), False, QUICK)
    assert [c.optimizer for c in checks] == list(OPTIMIZERS)
    for c in checks:
        assert [i.name for i in c.implementations] == ["foreach", "fused"]
        assert all(i.error <= 1 and not i.reason for i in c.implementations), c.describe()
        assert math.isfinite(c.default_ms) and all(i.rounds == QUICK.rounds for i in c.implementations)
        accepted = sorted((i for i in c.implementations if i.accepted), key=lambda i: i.median_ratio)
        assert c.strategy == (accepted[0].name if accepted else DEFAULT)
        assert c.outcome == ("add" if accepted else "unsatisfied")
    assert banked_implementations(model, str(tmp_path)) == {c.optimizer: c.strategy for c in checks
                                                             if c.strategy != DEFAULT}
    again = tune_optimizer_steps(model, str(tmp_path), False, QUICK)
    assert [(c.outcome, c.strategy) for c in again] == [("hit", c.strategy) for c in checks]
    assert tune_optimizer_steps(model, str(tmp_path), False, QUICK, implementations=()) == []


def test_an_implementation_that_updates_differently_is_rejected(tmp_path, monkeypatch):
    class Drifting(torch.optim.SGD):
        """SGD whose fused step uses a 1 % larger learning rate."""

        def step(self, closure=None):
            for group in self.param_groups:
                if group["fused"]:
                    group["lr"] = OPTIMIZERS["SGD"][1]["lr"] * 1.01
            return super().step(closure)

    monkeypatch.setattr(optimizer_step, "OPTIMIZERS", {"SGD": (Drifting, OPTIMIZERS["SGD"][1])})
    (check,) = tune_optimizer_steps(_model(), str(tmp_path), False, QUICK)
    foreach, fused = check.implementations
    assert foreach.error <= 1 and fused.error > 1 and not fused.accepted
    assert "parameters or state differ" in fused.describe() and math.isnan(fused.median_ms)
    assert check.strategy != "fused"


def test_the_banked_implementation_is_set_only_where_the_script_chose_none(capfd):
    model, other = _model(), _model()
    use_implementations(model, {CONTIGUOUS: {"AdamW": "fused", "SGD": "foreach"}})
    chosen = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _step(chosen)
    assert chosen.param_groups[0]["fused"] is True
    assert "AdamW's step runs torch's fused implementation" in capfd.readouterr().err
    configured = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    _step(configured)
    assert configured.param_groups[0]["fused"] is None and configured.param_groups[0]["foreach"] is False
    assert "left as it is (the optimizer has foreach=False, set by the script" in capfd.readouterr().err
    resumed = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    resumed.load_state_dict(_stepped_state(model))
    _step(resumed)
    assert resumed.param_groups[0]["foreach"] is None
    assert "left as it is (it has stepped before" in capfd.readouterr().err

    class Custom(torch.optim.AdamW):
        pass

    for untouched in (Custom(model.parameters()), torch.optim.AdamW(other.parameters()),
                      torch.optim.Adam(model.parameters())):
        _step(untouched)
        assert untouched.param_groups[0]["fused"] is None
    assert capfd.readouterr().err == ""


def _stepped_state(model: torch.nn.Module) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    _step(opt)
    state = opt.state_dict()
    state["param_groups"][0]["foreach"] = None
    return state


@pytest.mark.parametrize("strategy", ["fused", "os.system('touch /tmp/x')", 7])
def test_gdat_run_applies_the_bank_and_a_hostile_entry_applies_nothing(tmp_path, monkeypatch, capfd, strategy):
    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    model = _model()
    KnowledgeBase(str(tmp_path / "bank"), OPTIMIZER_STEP).put(_key(model, "AdamW", CONTIGUOUS),
                                                              {"strategy": strategy})
    bank_transform(model)
    said = capfd.readouterr().err
    opt = torch.optim.AdamW(model.parameters())
    _step(opt)
    if strategy == "fused":
        assert "applied torch's fused AdamW step for optimizers built over its parameters" in said
        assert opt.param_groups[0]["fused"] is True
    else:
        assert "no scene-train entry" in said and opt.param_groups[0]["fused"] is None


def _convnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4))


def test_a_convolutional_model_gets_a_verdict_per_layout_and_the_bank_applies_the_one_its_weights_take(
        tmp_path, monkeypatch, capfd):
    """Channels-last weights change what each implementation costs, so the check
    runs on both layouts and ``--gdat-aoe-bank`` reads the verdict of the layout
    the whole-model entry leaves."""
    model = _convnet()
    checks = tune_optimizer_steps(model, str(tmp_path / "bank"), False, QUICK, implementations=("fused",))
    assert [(c.layout, c.optimizer) for c in checks] == [(lay, o) for lay in (CONTIGUOUS, CHANNELS_LAST)
                                                         for o in OPTIMIZERS]
    assert all(c.implementations[0].error <= 1 for c in checks)
    assert "SGD step (4-D parameters channels-last), default implementation" in checks[-1].describe()
    kb = KnowledgeBase(str(tmp_path / "bank"), OPTIMIZER_STEP)
    kb.put(_key(model, "SGD", CONTIGUOUS), {"strategy": "fused"})
    kb.put(_key(model, "SGD", CHANNELS_LAST), {"strategy": "foreach"})
    banked = banked_implementations(model, str(tmp_path / "bank"))
    assert banked[CONTIGUOUS]["SGD"] == "fused" and banked[CHANNELS_LAST]["SGD"] == "foreach"
    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    from aoe_full.precision import MIXED_BF16
    from aoe_full.whole_model import _key as whole_key
    KnowledgeBase(str(tmp_path / "bank"), WHOLE_MODEL).put(whole_key(model, MIXED_BF16),
                                                           {"strategy": MIXED_CHANNELS_LAST})
    bank_transform(model)
    assert "foreach SGD step" in capfd.readouterr().err
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _step(opt)
    assert opt.param_groups[0]["foreach"] is True and model[0].weight.is_contiguous(memory_format=torch.channels_last)
    contiguous = _convnet()
    use_implementations(contiguous, banked)  # a script's own model, as built: the contiguous verdict
    opt = torch.optim.SGD(contiguous.parameters(), lr=0.1)
    _step(opt)
    assert opt.param_groups[0]["fused"] is True and opt.defaults["fused"] is None


def test_what_torch_would_refuse_with_the_flag_is_left_as_it_is(capfd):
    model = torch.nn.Embedding(10, 4, sparse=True)
    use_implementations(model, {CONTIGUOUS: {"SGD": "fused", "Adam": "foreach"}})
    sparse = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.tensor([1, 2])).sum().backward()
    sparse.step()
    assert sparse.param_groups[0]["fused"] is None
    assert "SGD's step left as it is (its gradients are sparse" in capfd.readouterr().err
    dense = _model()
    use_implementations(dense, {CONTIGUOUS: {"Adam": "foreach"}})
    tensor_lr = torch.optim.Adam(dense.parameters(), lr=torch.tensor(1e-3))
    _step(tensor_lr)
    assert tensor_lr.param_groups[0]["foreach"] is None
    assert "its learning rate or betas are tensors" in capfd.readouterr().err
