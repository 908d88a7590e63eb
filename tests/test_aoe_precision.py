"""Mixed precision as an opt-in whole-model candidate (``aoe --precision_mode
allow_mix_precision_bf16``): its loss check, its bank entry, and its application to a
model torch.fx cannot trace (a plain Hugging Face GPT-2 LM) by ``gdat-run --gdat-aoe-bank``."""
import glob
import importlib.util
import json
import math

import pytest
import torch

pytest.importorskip("transformers")

from aoe_full.apply import bank_transform  # noqa: E402
from aoe_full.cli import main  # noqa: E402
from aoe_full.precision import (  # noqa: E402
    BOUND, CHECK_STEPS, MIXED_BF16, PRECISION, AutocastForward, _key, training_loss)
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
            "--candidates", "no_mkldnn", "--tune_ops_file", str(tmp_path / "ops.json"),
            "--precision_mode", MIXED_BF16, "--rounds", "3", "--threads", "1", "--output", str(tmp_path / "out")]
    (tmp_path / "ops.json").write_text(json.dumps({"tune_ops_type": ["linear"]}))
    assert main(argv) == 0
    captured = capsys.readouterr()
    (result,) = glob.glob(str(tmp_path / "out" / "aoe_result_*.json"))
    with open(result) as f:
        mixed = json.load(f)["OPAT"]["mixed_precision"]
    check = mixed["loss_check"]
    assert check["steps"] == CHECK_STEPS == len(check["losses_fp32"]) == len(check["losses_mixed"])
    assert abs(check["losses_fp32"][0] - math.log(256)) < 0.3  # an untrained LM: about ln(vocabulary)
    assert check["losses_fp32"][-1] < check["losses_fp32"][0] - 0.05  # it trains
    worst = max(abs(a - b) for a, b in zip(check["losses_fp32"], check["losses_mixed"]))
    assert check["worst_abs_deviation"] == pytest.approx(worst) and 0 < worst
    assert check["bound"] == pytest.approx(BOUND * check["losses_fp32"][0])
    assert check["passed"] == (worst <= check["bound"])
    speed = mixed["train_step_ms"]
    assert mixed["accepted"] == (check["passed"] and speed["faster"])
    assert mixed["strategy"] == ("autocast_bf16" if mixed["accepted"] else "eager")
    assert mixed["outcome"] == ("add" if mixed["accepted"] else "unsatisfied")
    assert "[OPAT] mixed precision (bf16 autocast): train step" in captured.out
    ((key, payload),) = list(KnowledgeBase(str(tmp_path / "bank"), PRECISION).entries())
    assert key == _key(lm().train(), MIXED_BF16) and payload["strategy"] == mixed["strategy"]
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "earlier check" in again and "bank: hit" in again


def test_an_accepted_entry_runs_an_untraceable_lm_under_bf16_autocast(tmp_path, monkeypatch, capfd):
    """An accepted entry (written as a check that passed would write it) wraps the
    forward of the model the script builds, which torch.fx cannot trace: the matrix
    products run in bf16, the outputs and the gradients keep fp32 and stay close to
    the model as built; a model of another shape, or one already wrapped, is left alone."""
    _, lm = _factory(tmp_path)
    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    check = {"loss_check": {"worst_abs_deviation": 0.01, "bound": 0.11, "steps": CHECK_STEPS}}
    KnowledgeBase(str(tmp_path / "bank"), PRECISION).put(_key(lm().train(), MIXED_BF16),
                                                         {"strategy": "autocast_bf16", "check": check})
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    plain, tuned = lm().train(), lm().train()
    assert bank_transform(tuned) is tuned and isinstance(tuned.forward, AutocastForward)
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--gdat-aoe-bank: applied mixed precision (bf16 autocast" in lines[0], lines
    bank_transform(tuned)
    assert not isinstance(tuned.forward.forward, AutocastForward)
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
