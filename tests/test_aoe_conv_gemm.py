"""Convolutions with matrix products (``aoe_full.conv_gemm``): both variants are
the convolution (values and gradients, every geometry they accept), they run only
under CPU autocast, only on the convolutions they can compute, and the mixed
channels-last candidate that uses them keeps the chosen convolutions and variants in
the bank for ``gdat-run --gdat-aoe-bank``."""
import copy
import io
import json

import pytest
import torch
import torch.nn.functional as F

from aoe_full.apply import bank_transform
from aoe_full.conv_gemm import (_FUNCTIONS, ALL_PRODUCTS, VARIANTS, WEIGHT_GRADIENT, GemmConvForward, choose,
                                eligible, use_gemm)
from aoe_full.measure import MeasureConfig
from aoe_full.precision import KEEP, MIXED_BF16, AutocastForward
from aoe_full.whole_model import (MIXED_CHANNELS_LAST, MIXED_GEMM_CONVS, WHOLE_MODEL, _key, candidates_for, install,
                                  tune_whole_model, whole_model_entry)
from gdat.bank.store import KnowledgeBase

QUICK = MeasureConfig(rounds=3, warmup=1)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cin,cout,kernel,stride,padding,size,bias,channels_last", [
    (8, 16, (3, 3), (1, 1), (1, 1), (6, 6), False, True),
    (8, 16, (3, 3), (2, 2), (1, 1), (7, 7), True, False),
    (8, 16, (3, 3), (2, 2), (1, 1), (8, 8), False, True),
    (8, 4, (1, 1), (2, 2), (0, 0), (7, 5), False, True),
    (3, 8, (7, 7), (2, 2), (3, 3), (9, 6), True, False),
    (4, 6, (3, 1), (2, 1), (1, 0), (5, 4), True, True),
])
def test_each_variant_is_the_convolution_in_value_and_every_gradient(cin, cout, kernel, stride, padding, size, bias,
                                                                     channels_last, variant):
    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, cin, *size, generator=gen, dtype=torch.float64).contiguous(memory_format=fmt)
    w = torch.randn(cout, cin, *kernel, generator=gen, dtype=torch.float64).contiguous(memory_format=fmt)
    b = torch.randn(cout, generator=gen, dtype=torch.float64) if bias else None
    leaves = [t.requires_grad_() for t in (x, w, b) if t is not None]
    want = F.conv2d(x, w, b, stride, padding)
    got = _FUNCTIONS[variant].apply(x, w, b, stride, padding)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=0, atol=1e-12)
    gy = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    for a, e in zip(torch.autograd.grad(got, leaves, gy), torch.autograd.grad(want, leaves, gy)):
        assert a.shape == e.shape and torch.allclose(a, e, rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_it_computes_with_products_only_under_cpu_autocast_and_copies_with_its_module(variant):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 32, 3, 1, 1).to(memory_format=torch.channels_last)
    x = torch.randn(4, 16, 5, 5).contiguous(memory_format=torch.channels_last)
    built = copy.deepcopy(conv)
    assert use_gemm(conv, {"": variant}) == 1 and conv._conv_forward.variant == variant
    assert torch.equal(conv(x), built(x))  # outside autocast: F.conv2d, as built
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = conv(x), built(x)
    assert got.dtype == want.dtype == torch.bfloat16
    assert (got.float() - want.float()).abs().max() <= 2e-2 * want.float().abs().max()
    again = copy.deepcopy(conv)
    buf = io.BytesIO()
    torch.save(conv, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for m in (again, loaded):
        assert m._conv_forward.variant == variant and m.state_dict().keys() == built.state_dict().keys()
    with pytest.raises(ValueError, match="unknown variant 'os.system'"):
        GemmConvForward((1, 1), (1, 1), "os.system")


@pytest.mark.parametrize("variant", VARIANTS)
def test_its_output_takes_an_in_place_op_and_a_second_derivative_is_refused(variant):
    conv = torch.nn.Conv2d(4, 8, 3, 1, 1).to(memory_format=torch.channels_last)
    use_gemm(conv, {"": variant})
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.relu_(conv(x))  # a conv then ReLU(inplace=True), as VGG has it
    (gx,) = torch.autograd.grad(y.float().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


class _OwnForward(torch.nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2


def test_only_the_named_convolutions_it_can_compute_change():
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1, groups=2),
                                torch.nn.Conv2d(4, 4, 3, padding=2, dilation=2),
                                torch.nn.Conv2d(4, 4, 3, padding="same"),
                                torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
                                _OwnForward(4, 4, 1), torch.nn.Conv2d(4, 4, 1))
    assert [eligible(m) for m in model] == [True, False, False, False, False, False, True]
    convs = {**{str(i): ALL_PRODUCTS for i in range(6)}, "6": "os.system", "nope": ALL_PRODUCTS,
             "0.weight": WEIGHT_GRADIENT, "": WEIGHT_GRADIENT}
    assert use_gemm(model, convs) == 1
    assert [isinstance(m.__dict__.get("_conv_forward"), GemmConvForward) for m in model] == \
        [True, False, False, False, False, False, False]


def _convnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 2, 1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 16, 3, 1, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, 1, 1),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))


def test_each_distinct_convolution_is_checked_and_timed_once_as_the_candidate_runs_it():
    model = _convnet().train()
    install(model, MIXED_CHANNELS_LAST)
    found = choose(model, [torch.randn(4, 3, 16, 16)], QUICK)
    assert [c.modules for c in found] == [("0",), ("3", "5")]
    assert [c.input_shape for c in found] == [(4, 3, 16, 16), (4, 16, 8, 8)]
    for c in found:
        assert [v.name for v in c.variants] == list(VARIANTS) and c.built_ms > 0
        for v in c.variants:
            assert v.error <= 1.0 and v.rounds == QUICK.rounds and v.median_ms > 0
        assert c.chosen == ""  # three rounds can never pass the sign test at 5%
        said = json.loads(json.dumps(c.to_dict()))
        assert said["modules"] == list(c.modules) and said["chosen"] == "as built" and len(said["variants"]) == 2
        assert c.describe().endswith(": as built")
    assert choose(_convnet().train(), [torch.randn(4, 3, 16, 16)], QUICK) == []  # no autocast: nothing to choose


def test_the_candidate_is_mixed_for_convolutional_models_and_not_checked_without_a_faster_convolution(tmp_path):
    assert MIXED_GEMM_CONVS in candidates_for(MIXED_BF16, module=_convnet())
    assert MIXED_GEMM_CONVS not in candidates_for(KEEP, module=_convnet())
    assert MIXED_GEMM_CONVS not in candidates_for(MIXED_BF16, module=torch.nn.Linear(4, 4))
    found = tune_whole_model(_convnet().train(), [torch.randn(4, 3, 16, 16)], MIXED_BF16, str(tmp_path), False,
                             QUICK, frozenset({MIXED_GEMM_CONVS}))
    (candidate,) = found.candidates
    assert candidate.reason == "no convolution is faster with matrix products" and len(candidate.convs) == 2
    assert not found.accepted and len(found.to_dict()["candidates"][0]["convolutions"]) == 2
    assert found.describe().count("rounds faster): as built") == 2


@pytest.mark.parametrize("convs,applied", [
    ({"3": ALL_PRODUCTS, "nope": ALL_PRODUCTS, "1": ALL_PRODUCTS, "5": "eval"}, 1),
    ({"0": WEIGHT_GRADIENT, "3": ALL_PRODUCTS, "5": WEIGHT_GRADIENT}, 3), (["3"], 0), ("3", 0),
    ({str(i): ALL_PRODUCTS for i in range(5000)}, 0)])
def test_gdat_run_applies_the_banked_convolutions_and_reads_hostile_names_as_none(tmp_path, monkeypatch, capfd, convs,
                                                                                  applied):
    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path))
    model = _convnet().train()
    KnowledgeBase(str(tmp_path), WHOLE_MODEL).put(_key(model, MIXED_BF16),
                                                  {"strategy": MIXED_GEMM_CONVS, "convs": convs})
    entry = whole_model_entry(model, str(tmp_path))
    assert entry.strategy == MIXED_GEMM_CONVS and len(entry.convs) == applied
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
    assert bank_transform(model) is model and isinstance(model.forward, AutocastForward)
    assert f"{applied} convolution(s) with matrix products" in capfd.readouterr().err
    assert {n: m._conv_forward.variant for n, m in model.named_children()
            if isinstance(m.__dict__.get("_conv_forward"), GemmConvForward)} == dict(entry.convs)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = model(x)
    assert got.dtype == torch.float32 and (got - want).abs().max() <= 0.05 * want.abs().max()


def test_a_chosen_convolution_is_banked_with_its_variant_and_installed_for_the_loss_check(tmp_path, monkeypatch):
    """The accepted path, with the sign test's verdict forced (timing is not what is
    tested here): every variant of every convolution wins, the candidate is checked
    (loss check) with the fastest variants installed, and the bank keeps them."""
    import aoe_full.conv_gemm as conv_gemm
    import aoe_full.whole_model as whole_model

    def won(candidate, reference, cfg):
        return {**timed(candidate, reference, cfg), "faster": True}
    timed = conv_gemm.timed_fields
    monkeypatch.setattr(conv_gemm, "timed_fields", won)
    monkeypatch.setattr(whole_model, "timed_fields", won)
    bank = str(tmp_path)
    found = tune_whole_model(_convnet().train(), [torch.randn(4, 3, 16, 16)], MIXED_BF16, bank, False, QUICK,
                             frozenset({MIXED_GEMM_CONVS}))
    (candidate,) = found.candidates
    assert candidate.correct and candidate.accepted and found.strategy == MIXED_GEMM_CONVS, found.describe()
    assert set(candidate.chosen_convs) == {"0", "3", "5"} and set(candidate.chosen_convs.values()) <= set(VARIANTS)
    stored = KnowledgeBase(bank, WHOLE_MODEL).get(_key(_convnet(), MIXED_BF16))
    assert stored["strategy"] == MIXED_GEMM_CONVS and stored["convs"] == candidate.chosen_convs
    assert dict(whole_model_entry(_convnet(), bank).convs) == candidate.chosen_convs
    kb = KnowledgeBase(bank, WHOLE_MODEL)
    kb.put(_key(_convnet(), MIXED_BF16), {**stored, "convs": {"0": "all_products"}})
    again = tune_whole_model(_convnet().train(), [torch.randn(4, 3, 16, 16)], MIXED_BF16, bank, True, QUICK,
                             frozenset({MIXED_GEMM_CONVS}))
    assert again.outcome == "update" and set(kb.get(_key(_convnet(), MIXED_BF16))["convs"]) == {"0", "3", "5"}
