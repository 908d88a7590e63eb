"""The whole-model candidates of scene train (``aoe_full.whole_model``): the forward
compiled in segments and channels-last weights (exact: checked on the loss and every
gradient), mixed precision as an opt-in
(``aoe --precision_mode allow_mix_precision_bf16``: checked on the training loss),
their bank entries, and their application to a model torch.fx cannot trace (a plain
Hugging Face GPT-2 LM) by ``gdat-run --gdat-aoe-bank``."""
import glob
import importlib.util
import inspect
import json
import math

import pytest
import torch

pytest.importorskip("transformers")

from aoe_full.apply import bank_transform  # noqa: E402
from aoe_full.cli import main  # noqa: E402
from aoe_full.measure import MeasureConfig  # noqa: E402
from aoe_full.optimizer_step import OPTIMIZER_STEP, OPTIMIZERS  # noqa: E402
from aoe_full.precision import BOUND, CHECK_STEPS, KEEP, MIXED_BF16, AutocastForward, training_loss  # noqa: E402
from aoe_full.whole_model import WHOLE_MODEL, _key, tune_whole_model, whole_model_entry  # noqa: E402
from gdat.bank.store import KnowledgeBase  # noqa: E402
from tests.test_aoe_real_models import USER_GPT2  # noqa: E402


def _factory(tmp_path):
    path = tmp_path / "user_gpt2.py"
    path.write_text(USER_GPT2)
    spec = importlib.util.spec_from_file_location("user_gpt2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module.lm


def test_the_check_trains_both_on_the_lm_objective_and_the_bank_keeps_its_verdict(tmp_path, monkeypatch, capsys):
    """The loss check trains fp32 and bf16-autocast copies on next-token
    cross-entropy from the same weights and data; the verdict (accepted only when
    the loss stays within the bound and the step is faster) is what the bank keeps,
    and a second run hits it."""
    path, lm = _factory(tmp_path)
    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    argv = ["--job_type", "2", "--model", f"{path}:lm", "--input_shape", "input_ids:2,16",
            "--input_dtype", "input_ids:int64", "--input_range", "input_ids:0,256", "--scene", "train",
            "--candidates", "no_mkldnn,autocast_bf16,optimizer_fused", "--tune_ops_file", str(tmp_path / "ops.json"),
            "--precision_mode", MIXED_BF16, "--rounds", "3", "--threads", "1", "--output", str(tmp_path / "out")]
    (tmp_path / "ops.json").write_text(json.dumps({"tune_ops_type": ["linear"]}))
    assert main(argv) == 0
    captured = capsys.readouterr()
    (result,) = glob.glob(str(tmp_path / "out" / "aoe_result_*.json"))
    with open(result) as f:
        whole = json.load(f)["OPAT"]["whole_model_train"]
    (mixed,) = whole["candidates"]
    check = mixed["check"]
    assert mixed["candidate"] == "autocast_bf16" and not mixed["exact"]
    assert CHECK_STEPS == len(whole["losses_fp32"]) == len(check["losses"])
    assert abs(whole["losses_fp32"][0] - math.log(256)) < 0.3  # an untrained LM: about ln(vocabulary)
    assert whole["losses_fp32"][-1] < whole["losses_fp32"][0] - 0.05  # it trains
    worst = max(abs(a - b) for a, b in zip(whole["losses_fp32"], check["losses"]))
    assert check["worst_abs_deviation"] == pytest.approx(worst) and 0 < worst
    assert check["bound"] == pytest.approx(BOUND * whole["losses_fp32"][0])
    assert check["passed"] == (worst <= check["bound"])
    assert mixed["accepted"] == (check["passed"] and mixed["faster"])
    assert whole["strategy"] == ("autocast_bf16" if mixed["accepted"] else "eager")
    assert whole["outcome"] == ("add" if mixed["accepted"] else "unsatisfied")
    assert "[OPAT] whole model in training, as built:" in captured.out
    assert "  autocast_bf16: " in captured.out
    assert ("aoe: whole model in training: no candidate both correct and faster" in captured.err) \
        == (not mixed["accepted"])
    ((key, payload),) = list(KnowledgeBase(str(tmp_path / "bank"), WHOLE_MODEL).entries())
    assert key == _key(lm().train(), MIXED_BF16) and payload["strategy"] == whole["strategy"]
    with open(result) as f:
        steps = json.load(f)["OPAT"]["optimizer_step_train"]
    assert [s["optimizer"] for s in steps] == list(OPTIMIZERS)
    for step in steps:  # --candidates allowed the fused implementation only
        (fused,) = step["implementations"]
        assert fused["implementation"] == "fused" and fused["passed"] and fused["relative_error"] <= 1
        assert step["strategy"] == ("fused" if fused["accepted"] else "default")
        assert f"[OPAT] {step['optimizer']} step, default implementation: " in captured.out
    assert len(list(KnowledgeBase(str(tmp_path / "bank"), OPTIMIZER_STEP).entries())) == len(OPTIMIZERS)
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "by an earlier check" in again and "bank: hit" in again
    assert "[OPAT] AdamW step: " in again and "by an earlier check" in again.split("AdamW step: ")[1]


def test_an_accepted_entry_runs_an_untraceable_lm_under_bf16_autocast(tmp_path, monkeypatch, capfd):
    """An accepted entry (written as a check that passed would write it) wraps the
    forward of the model the script builds, which torch.fx cannot trace: the matrix
    products run in bf16, the outputs and the gradients keep fp32 and stay close to
    the model as built; a model of another shape, or one already wrapped, is left alone."""
    _, lm = _factory(tmp_path)
    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    check = {"loss_check": {"worst_abs_deviation": 0.01, "bound": 0.11, "steps": CHECK_STEPS}}
    KnowledgeBase(str(tmp_path / "bank"), WHOLE_MODEL).put(_key(lm().train(), MIXED_BF16),
                                                         {"strategy": "autocast_bf16", "check": check})
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    plain, tuned = lm().train(), lm().train()
    assert bank_transform(tuned) is tuned and isinstance(tuned.forward, AutocastForward)
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--gdat-aoe-bank: applied mixed precision (bf16 autocast" in lines[0], lines
    assert f"checked by aoe --precision_mode {MIXED_BF16}" in lines[0]
    bank_transform(tuned)
    assert not isinstance(tuned.forward.forward, AutocastForward)
    assert inspect.signature(tuned.forward) == inspect.signature(plain.forward)
    capfd.readouterr()
    out_plain, out_tuned = plain(ids), tuned(ids)
    assert out_tuned.logits.dtype == torch.float32 and not torch.equal(out_tuned.logits, out_plain.logits)
    torch.testing.assert_close(out_tuned.logits, out_plain.logits, rtol=0.05, atol=0.05)
    training_loss(out_plain, [ids]).backward()
    training_loss(out_tuned, [ids]).backward()
    for p, q in zip(plain.parameters(), tuned.parameters()):
        assert q.grad.dtype == torch.float32
    other = lm()
    other.transformer.wte = torch.nn.Embedding(300, 32)
    bank_transform(other)
    assert not isinstance(other.forward, AutocastForward)
    assert "no scene-train entry" in capfd.readouterr().err


class _AutocastSensitive(torch.nn.Module):
    """A model whose training goes elsewhere under autocast (as one whose numerics
    do not survive bf16 would): the gate must reject it."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(32, 32)

    def forward(self, x):
        y = self.lin(x)
        return y * 3 if torch.is_autocast_enabled("cpu") else y


def test_a_recheck_that_rejects_withdraws_the_entry_and_a_check_that_cannot_run_writes_nothing(tmp_path):
    bank = str(tmp_path / "bank")
    model, x = _AutocastSensitive().train(), torch.randn(8, 32)
    kb = KnowledgeBase(bank, WHOLE_MODEL)
    kb.put(_key(model, MIXED_BF16), {"strategy": "autocast_bf16", "check": {}})
    assert whole_model_entry(model, bank).strategy
    only = frozenset({"autocast_bf16"})
    found = tune_whole_model(model, [x], MIXED_BF16, bank, True, MeasureConfig(rounds=3), only)
    (mixed,) = found.candidates
    assert not mixed.correct and not found.accepted and "loss differs" in found.describe()
    assert (found.outcome, found.strategy) == ("update", "eager")
    assert kb.get(_key(model, MIXED_BF16))["strategy"] == "eager" and whole_model_entry(model, bank).strategy == ""
    frozen = torch.nn.Linear(4, 4).requires_grad_(False)
    other = str(tmp_path / "other")
    found = tune_whole_model(frozen, [torch.randn(2, 4)], MIXED_BF16, other, False, MeasureConfig(rounds=3), only)
    assert found.reason.startswith("ValueError") and found.outcome == "unsatisfied" and not found.accepted
    assert "not checked" in found.describe() and not list(KnowledgeBase(other, WHOLE_MODEL).entries())


@pytest.mark.parametrize("check", [None, "x", [], {"loss_check": {"worst_abs_deviation": "x", "bound": None,
                                                                  "steps": 10 ** 400}}])
def test_a_hostile_entry_neither_stops_the_job_nor_runs_unchecked_code(tmp_path, monkeypatch, capfd, check):
    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    model = _AutocastSensitive().train()
    KnowledgeBase(str(tmp_path / "bank"), WHOLE_MODEL).put(_key(model, MIXED_BF16),
                                                         {"strategy": "autocast_bf16", "check": check})
    assert bank_transform(model) is model and isinstance(model.forward, AutocastForward)
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert "applied mixed precision (bf16 autocast, while training)" in line


@pytest.mark.parametrize("strategy", [None, 3, "os.system", "compiled"])
def test_an_entry_naming_no_whole_model_candidate_applies_nothing(tmp_path, monkeypatch, capfd, strategy):
    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    model = _AutocastSensitive().train()
    forward = model.forward
    for mode in (KEEP, MIXED_BF16):
        KnowledgeBase(str(tmp_path / "bank"), WHOLE_MODEL).put(_key(model, mode), {"strategy": strategy})
    assert bank_transform(model) is model and model.forward == forward
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert "found no whole-model candidate both correct and faster (as built)" in line
    assert line.endswith("the model is used as built")


def test_exact_choices_and_mixed_precision_apply_together_and_eval_runs_as_built(tmp_path, monkeypatch, capfd):
    """On a model torch.fx traces, the operator choices are installed first and the
    autocast wraps the forward they leave (showing its signature); in eval
    mode the forward runs as built (the loss check covered training only)."""
    from aoe_full.rewrite import is_tuned
    from aoe_full.sample_models import small_convnet
    from tests.test_aoe_apply import _store_ops

    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    x = torch.randn(2, 3, 16, 16)
    _store_ops(str(tmp_path / "bank"), small_convnet(), x, "train", {"conv": "channels_last"})
    model = small_convnet().train()
    KnowledgeBase(str(tmp_path / "bank"), WHOLE_MODEL).put(_key(model, MIXED_BF16), {"strategy": "autocast_bf16"})
    plain = small_convnet().train()
    bank_transform(model)
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert "operator and 0 subgraph choice(s) and mixed precision" in line, line
    assert is_tuned(model) and isinstance(model.forward, AutocastForward)
    assert inspect.signature(model.forward) == inspect.signature(model.forward.forward)
    model.eval(), plain.eval()
    torch.testing.assert_close(model(x), plain(x))
    model.train(), plain.train()
    out = model(x)
    assert out.dtype == torch.float32 and not torch.equal(out, plain(x))


def test_a_bank_plug_in_that_fails_leaves_the_job_running_on_the_model_as_built(monkeypatch, capfd):
    """gdat is never the reason a job fails: whatever the ``aoe_bank`` plug-in raises,
    the DDP constructor gets the model back, with one warning naming the error."""
    import gdat.ddp

    class _Broken:
        def load(self):
            def transform(module):
                raise RuntimeError("corrupt bank")
            return transform

    monkeypatch.setattr(gdat.ddp, "entry_points", lambda **_: [_Broken()])
    model = torch.nn.Linear(2, 2)
    assert gdat.ddp._aoe_bank(model) is model
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert "--gdat-aoe-bank: the bank could not be applied (RuntimeError: corrupt bank)" in line


def test_channels_last_weights_are_offered_to_convolutional_models_only_and_keep_the_parameters(tmp_path):
    """The layout candidate changes how the same parameters are stored, not which
    parameters there are: its exact check runs (loss and every gradient), the bank
    keeps the verdict, and the installed model keeps its state_dict keys and values."""
    from aoe_full.whole_model import CHANNELS_LAST, candidates_for, install
    from aoe_full.sample_models import small_convnet

    assert CHANNELS_LAST not in candidates_for(KEEP, module=torch.nn.Linear(4, 4))
    assert CHANNELS_LAST in candidates_for(KEEP, module=small_convnet())
    x = torch.randn(4, 3, 16, 16)
    found = tune_whole_model(small_convnet().train(), [x], KEEP, str(tmp_path / "bank"), False,
                           MeasureConfig(rounds=3), frozenset({CHANNELS_LAST}))
    (candidate,) = found.candidates
    assert candidate.exact and math.isfinite(candidate.error) and candidate.reason == ""
    assert candidate.correct == (candidate.error <= 1.0)
    assert found.to_dict()["candidates"][0]["check"]["relative_error"] == candidate.error
    assert found.outcome == ("add" if candidate.accepted else "unsatisfied")
    (_, payload), = KnowledgeBase(str(tmp_path / "bank"), WHOLE_MODEL).entries()
    assert payload["strategy"] == found.strategy == (CHANNELS_LAST if candidate.accepted else "eager")
    assert payload["check"]["strategy"] == found.strategy
    plain, tuned = small_convnet(), small_convnet()
    install(tuned, CHANNELS_LAST)
    conv = next(p for p in tuned.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert plain.state_dict().keys() == tuned.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), tuned.state_dict().values()))


def test_gdat_run_says_what_the_check_measured_when_no_candidate_won(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    model = _AutocastSensitive().train()
    forward = model.forward
    check = {"eager_train_step_ms": 913.7, "candidates": [
        {"candidate": "compiled_segments", "median_ratio": 0.985, "rounds_faster": "4/5"},
        {"candidate": "autocast_bf16", "reason": "ValueError: no floating output"},
        {"candidate": "os.system", "median_ratio": 0.1}, "junk"]}
    KnowledgeBase(str(tmp_path / "bank"), WHOLE_MODEL).put(_key(model, KEEP), {"strategy": "eager", "check": check})
    assert bank_transform(model) is model and model.forward == forward
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert ("--gdat-aoe-bank: aoe --precision_mode must_keep_origin_dtype found no whole-model candidate both correct "
            "and faster (as built 913.7 ms per step; compiled_segments 0.985x, 4/5 rounds faster; autocast_bf16 not "
            "timed (ValueError: no floating output)); the model is used as built") in line, line


def test_a_candidate_that_failed_its_check_is_described_as_not_timed():
    from aoe_full.whole_model import COMPILED, CandidateCheck
    said = CandidateCheck(COMPILED, True, error=330.0, first_call_s=3.0).describe()
    assert said == (f"{COMPILED}: not timed (first call 3.0 s); gradients within 3.3e+02 x the fp32 tolerance: "
                    "rejected: gradients differ")
