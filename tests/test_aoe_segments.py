"""The exact whole-model candidate of scene train: a model's forward compiled by
Inductor in segments cut at its repeated blocks (``aoe_full.segments``), on a
Hugging Face GPT-2 LM with dropout (torch.fx cannot trace it)."""
import warnings

import pytest
import torch

pytest.importorskip("transformers")

import aoe_full.segments as segments  # noqa: E402
from aoe_full.measure import relative_error  # noqa: E402
from aoe_full.precision import KEEP, training_loss  # noqa: E402
from aoe_full.whole_model import COMPILED, WHOLE_MODEL, install  # noqa: E402
from aoe_full.strategies import compile_unavailable_reason  # noqa: E402
from gdat.bank.store import KnowledgeBase  # noqa: E402
from tests.distributed import one_rank_group  # noqa: E402

needs_compile = pytest.mark.skipif(compile_unavailable_reason() is not None,
                                   reason=f"torch.compile cannot run here: {compile_unavailable_reason()}")


def _lm() -> torch.nn.Module:
    """A GPT-2 LM as a training script builds it: dropout 0.1 everywhere, cache on."""
    import transformers
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=256, n_positions=64)).train()


def _step(model: torch.nn.Module, ids: torch.Tensor, seed: int) -> tuple:
    torch.manual_seed(seed)
    loss = training_loss(model(ids), [ids])
    return loss.detach(), torch.autograd.grad(loss, list(model.parameters()))


def _compiled_backwards(loss: torch.Tensor) -> int:
    """How many compiled graphs' backward nodes the autograd graph of ``loss`` holds."""
    seen, todo, found = set(), [loss.grad_fn], 0
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        found += "CompiledFunctionBackward" in type(node).__name__
        todo.extend(n for n, _ in node.next_functions)
    return found


def test_repeated_blocks_are_the_elements_of_containers_of_one_user_class():
    assert [p for p, _ in segments.repeated_blocks(_lm())] == ["transformer.h.0", "transformer.h.1"]
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))  # torch.nn's own layers: no blocks
    assert segments.repeated_blocks(plain) == []


@needs_compile
def test_compiled_segments_give_eager_training_step_with_dropout_and_keep_one_backward_per_block():
    """The check aoe runs (loss and every gradient from the same seed, within the
    fp32 tolerance) passes with dropout active, because the segments draw eager's
    masks; the backward is one compiled graph per block and more for the code
    around them (the head and loss), so DDP can still reduce the last block's
    gradients while the first runs; under DDP the gradients stay eager's; in eval mode the forward is the
    model's own."""
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    plain, tuned = _lm(), _lm()
    install(tuned, COMPILED)
    assert isinstance(tuned.forward, segments.SegmentedForward)
    limit = torch._dynamo.config.recompile_limit  # raised only while the compiled model runs
    assert relative_error(_step(plain, ids, 5), _step(tuned, ids, 5)) <= 1.0
    assert relative_error(_step(plain, ids, 5), _step(plain, ids, 6)) > 1.0  # dropout is active: masks matter
    torch.manual_seed(5)
    assert _compiled_backwards(training_loss(tuned(ids), [ids])) >= 2 + 1
    assert torch._dynamo.config.recompile_limit == limit
    with one_rank_group():
        ddp_plain, ddp_tuned = (torch.nn.parallel.DistributedDataParallel(m) for m in (plain, tuned))
        for m in (ddp_plain, ddp_tuned):
            torch.manual_seed(7)
            training_loss(m(ids), [ids]).backward()
        assert relative_error([p.grad for p in plain.parameters()], [p.grad for p in tuned.parameters()]) <= 1.0
    plain.eval(), tuned.eval()
    assert torch.equal(plain(ids).logits, tuned(ids).logits)


def test_a_compile_that_fails_leaves_the_model_as_built_with_one_warning(monkeypatch):
    def failing(forward, tag, mixed):
        def call(*args, **kwargs):
            raise RuntimeError("InductorError: no C++ compiler on this node")
        return call

    monkeypatch.setattr(segments, "_compile", failing)
    ids = torch.randint(0, 256, (2, 16))
    plain, tuned = _lm(), _lm()
    install(tuned, COMPILED)
    with pytest.warns(RuntimeWarning, match="compiled segments switched off.*no C\\+\\+ compiler"):
        torch.manual_seed(2)
        out = tuned(ids).logits
    torch.manual_seed(2)
    assert torch.equal(out, plain(ids).logits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tuned(ids)


def test_a_compile_that_fails_at_a_later_call_leaves_the_model_as_built_with_one_warning(monkeypatch):
    """A later call that fails in Dynamo (compiling again for new shapes) switches
    the model back to as built for good, and that call's result is the model's own;
    another error of a later call, or one the model as built raises too, is the
    model's own and keeps the segments."""
    def fails_second(forward, tag, mixed):
        calls = []

        def call(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise ValueError("the model's own error")
            if len(calls) > 2:
                raise torch._dynamo.exc.TorchDynamoException("recompiling for new shapes failed")
            return forward(*args, **kwargs)
        return call

    def out_of_vocabulary():
        return torch.full((2, 16), 300)  # the vocabulary has 256 tokens: the model as built fails too

    monkeypatch.setattr(segments, "_compile", fails_second)
    plain, tuned = _lm(), _lm()
    install(tuned, COMPILED)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tuned(torch.randint(0, 256, (2, 16)))
        with pytest.raises(ValueError, match="the model's own error"):
            tuned(torch.randint(0, 256, (2, 16)))
        with pytest.raises(IndexError):
            tuned(out_of_vocabulary())
    assert tuned.forward.switch.on
    longer = torch.randint(0, 256, (2, 24))
    with pytest.warns(RuntimeWarning, match="switched off.*recompiling for new shapes failed"):
        torch.manual_seed(4)
        out = tuned(longer).logits
    torch.manual_seed(4)
    assert torch.equal(out, plain(longer).logits) and not tuned.forward.switch.on


def test_gdat_run_applies_an_exact_entry_and_the_mixed_one_before_it(tmp_path, monkeypatch, capfd):
    """``--gdat-aoe-bank`` installs the compiled segments from the exact entry, and
    the mixed mode's entry instead where it holds a candidate (one line each)."""
    from aoe_full.apply import bank_transform
    from aoe_full.precision import MIXED_BF16, AutocastForward
    from aoe_full.whole_model import MIXED_COMPILED, _key

    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    kb = KnowledgeBase(str(tmp_path / "bank"), WHOLE_MODEL)
    kb.put(_key(_lm(), KEEP), {"strategy": COMPILED})
    model = bank_transform(_lm())
    assert isinstance(model.forward, segments.SegmentedForward)
    assert all(isinstance(b.forward, segments._BlockForward) for b in model.transformer.h)
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert "--gdat-aoe-bank: applied the training forward compiled in segments (Inductor, exact)" in line
    kb.put(_key(_lm(), MIXED_BF16), {"strategy": MIXED_COMPILED})
    model = bank_transform(_lm())
    assert isinstance(model.forward, AutocastForward) and isinstance(model.forward.forward, segments.SegmentedForward)
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert "applied mixed precision compiled in segments" in line
