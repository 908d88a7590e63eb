"""aoe_full on real architectures (Hugging Face BERT and GPT-2, a ResNet), tiny
configurations of them so CI stays fast: torch.fx cannot trace them, so the
``aoe`` command exports them with torch.export, tunes on token ids given with
``--input_dtype`` / ``--input_range``, and the tuned model loads back."""
from __future__ import annotations

import glob
import json

import pytest
import torch

pytest.importorskip("transformers", reason="the aoe extra (transformers) is not installed")

import aoe_full  # noqa: E402
from aoe_full import real_models  # noqa: E402
from aoe_full.cli import main  # noqa: E402
from aoe_full.engines import engine_unavailable_reason  # noqa: E402

MODELS = real_models.__file__


def _aoe(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    code = main(argv + ["--rounds", "3", "--threads", "1", "--output", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert captured.out.strip().endswith("Aoe process finished")
    (result,) = glob.glob(str(tmp_path / "out" / "aoe_result_*.json"))
    return json.loads(open(result).read()), captured.out


def _close(a, b):
    leaves_a = torch.utils._pytree.tree_leaves(a)
    leaves_b = torch.utils._pytree.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-5)


def test_bert_sgat_infer_on_token_ids_with_an_engine(tmp_path, monkeypatch, capsys):
    engine = "onnxrt" if engine_unavailable_reason("onnxrt") is None else "channels_last"
    doc, printed = _aoe(tmp_path, monkeypatch, capsys, [
        "--job_type", "1", "--model", f"{MODELS}:bert_tiny", "--input_shape", "input_ids:2,16",
        "--input_dtype", "input_ids:int64", "--input_range", "input_ids:0,256",
        "--candidates", engine])
    section = doc["SGAT"]
    labels = [i["label"] for i in section["items"]]
    assert labels[0].startswith("subgraph <whole model>")
    assert any("encoder.layer.0" in label for label in labels)  # the repeated blocks
    # the two identical encoder layers are one item
    assert sum("encoder.layer" in label for label in labels) == 1
    if engine == "onnxrt":
        assert section["items"][0]["candidates"]["onnxrt"]["status"] == "ok"
    assert set(section["configurations"]) <= {"whole model", "subgraphs", "tuned"}
    assert section["offline_model"]["reason"] or section["offline_model"]["path"]
    model = aoe_full.load_tuned(section["tuned_model"], source=f"{MODELS}:bert_tiny")
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        _close(model(ids), real_models.bert_tiny().eval()(ids))


def test_gpt2_opat_train(tmp_path, monkeypatch, capsys):
    doc, _ = _aoe(tmp_path, monkeypatch, capsys, [
        "--job_type", "2", "--model", f"{MODELS}:gpt2_tiny", "--input_shape", "input_ids:2,16",
        "--input_dtype", "input_ids:int64", "--input_range", "input_ids:0,256",
        "--scene", "train", "--candidates", "no_mkldnn", "--tune_ops_file",
        _ops(tmp_path, ["linear", "norm"])])
    section = doc["OPAT"]
    assert section["measured_items"] >= 2
    assert section["whole_model"]["relative_error_in_tolerances"] <= 1.0
    model = aoe_full.load_tuned(section["tuned_model"], source=f"{MODELS}:gpt2_tiny")
    ids = torch.randint(0, 256, (2, 16))
    _close(model(ids), real_models.gpt2_tiny().train()(ids))


def test_resnet_sgat_infer(tmp_path, monkeypatch, capsys):
    doc, _ = _aoe(tmp_path, monkeypatch, capsys, [
        "--job_type", "1", "--model", f"{MODELS}:resnet_tiny", "--input_shape",
        "pixel_values:2,3,32,32", "--candidates", "channels_last"])
    section = doc["SGAT"]
    assert any("encoder.stages.0" in i["label"] for i in section["items"])
    model = aoe_full.load_tuned(section["tuned_model"], source=f"{MODELS}:resnet_tiny")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(model(x), real_models.resnet_tiny().eval()(x))


def _ops(tmp_path, types):
    path = tmp_path / "ops.json"
    path.write_text(json.dumps({"tune_ops_type": types}))
    return str(path)


def test_resnet18_is_resnet18():
    assert sum(p.numel() for p in real_models.resnet18().parameters()) == 11_689_512


USER_GPT2 = '''import torch
import transformers


def lm():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=256, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0))
'''


def test_a_gpt2_lm_as_a_training_script_builds_it_goes_through_the_train_scene(tmp_path, monkeypatch, capsys):
    """A plain ``GPT2LMHeadModel`` from a config, ``use_cache`` on by default: torch.fx
    cannot trace it, and torch.export cannot return its ``DynamicCache``; it is
    exported with ``use_cache=False`` and tuned, and the tuned model computes the
    same logits as the model built by the factory."""
    factory = tmp_path / "user_gpt2.py"
    factory.write_text(USER_GPT2)
    doc, _ = _aoe(tmp_path, monkeypatch, capsys, [
        "--job_type", "2", "--model", f"{factory}:lm", "--input_shape", "input_ids:2,16",
        "--input_dtype", "input_ids:int64", "--input_range", "input_ids:0,256",
        "--scene", "train", "--candidates", "no_mkldnn", "--tune_ops_file", _ops(tmp_path, ["linear"])])
    section = doc["OPAT"]
    assert section["measured_items"] >= 1
    model = aoe_full.load_tuned(section["tuned_model"], source=f"{factory}:lm")
    ids = torch.randint(0, 256, (2, 16))
    import importlib.util
    spec = importlib.util.spec_from_file_location("user_gpt2", factory)
    user = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(user)
    torch.testing.assert_close(model(ids).logits, user.lm().train()(ids).logits, rtol=1e-4, atol=1e-5)
