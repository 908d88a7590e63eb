"""The aoe command: bad input gives one line, exit 2 and no files; a good run
writes every artefact, and a second run with the same bank only hits."""
from __future__ import annotations

import glob
import json
import os

import pytest
import torch

import aoe_full
from aoe_full.cli import main
from aoe_full.sample_models import small_convnet

MODEL = os.path.join(os.path.dirname(aoe_full.__file__), "sample_models.py")


def _bad(tmp_path, capsys, monkeypatch, argv, match, env=None):
    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "out"
    code = main(argv + ["--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aoe: error: "), err
    assert match in lines[0]
    assert not out.exists() and not (tmp_path / "bank").exists()


@pytest.mark.parametrize("argv,match", [
    (["--job_type", "2", "--model", "nope.py:f", "--input_shape", "x:1,3,8,8"], "does not exist"),
    (["--job_type", "2", "--input_shape", "x:1,3,8,8"], "--model is required"),
    (["--job_type", "2", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,a,8"],
     "bad --input_shape"),
    (["--job_type", "2", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,0,8"],
     "positive integer"),
    (["--job_type", "2", "--model", f"{MODEL}:small_convnet", "--input_shape", "1,3,8,8"],
     "bad --input_shape"),
    (["--job_type", "3", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,8,8"],
     "unknown --job_type"),
    (["--model", f"{MODEL}:small_convnet"], "--job_type"),
    (["--job_type", "2", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,8,8",
      "--scene", "both"], "unknown --scene"),
    (["--job_type", "2", "--model", f"{MODEL}:no_such", "--input_shape", "x:1,3,8,8"],
     "no callable"),
    (["--job_type", "2", "--model", f"{MODEL}:small_convnet", "--input_shape", "y:1,3,8,8"],
     "forward takes x"),
    (["--job_type", "2", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,8,8",
      "--candidates", "warp_drive"], "unknown --candidates"),
    (["--job_type", "2", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,8,8",
      "--framework", "3"], "unknown --framework"),
    (["--job_type", "1", "--model", "m.onnx", "--input_shape", "x:1,3,8,8", "--framework", "5"],
     "ONNX) is not supported"),
    (["--job_type", "1", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,8,8",
      "--", "extra"], "only for --job_type 4"),
    (["--job_type", "4", "--model", "missing_train.py"], "does not exist"),
    (["--job_type", "1", "--model", f"{MODEL}:small_convnet", "--input_shape",
      "input:100000000000,16"], "larger than"),
    (["--job_type", "1", "--model", f"{MODEL}:small_convnet", "--input_shape",
      "x:100000,3,1000,10"], "byte limit"),
    (["--job_type", "1", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,8,8",
      "--input_dtype", "x:complex64"], "unknown dtype"),
    (["--job_type", "1", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,8,8",
      "--input_dtype", "x:int64"], "--input_range x:LOW,HIGH"),
    (["--job_type", "1", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,8,8",
      "--input_range", "y:0,1"], "which --input_shape does not"),
    (["--job_type", "1", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,8,8",
      "--input_range", "x:1,0"], "LOW < HIGH"),
    (["--job_type", "1", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,8,8",
      "--rounds", "100000000"], "--rounds"),
    (["--job_type", "4", "--model", MODEL, "--gdat_args", "--gdat-mode off"], "must not set"),
    (["--job_type", "1", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,8,8",
      "--scene", "train", "--precision_mode", "allow_mix_precision"], "allow_mix_precision_bf16 mixes bf16"),
    (["--job_type", "1", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,8,8",
      "--precision_mode", "allow_mix_precision_bf16"], "it needs --scene train"),
    (["--job_type", "2", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,8,8",
      "--scene", "train", "--precision_mode", "force_fp16"], "unknown --precision_mode"),
    (["--job_type", "4", "--model", MODEL, "--precision_mode", "allow_mix_precision_bf16"],
     "--precision_mode is for --job_type 1 and 2"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch, argv, match):
    _bad(tmp_path, capsys, monkeypatch, argv, match)


def test_bad_repeat_tune_is_rejected(tmp_path, capsys, monkeypatch):
    _bad(tmp_path, capsys, monkeypatch,
         ["--job_type", "2", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,8,8"],
         "REPEAT_TUNE", env={"REPEAT_TUNE": "maybe"})


def test_bad_tune_ops_file(tmp_path, capsys, monkeypatch):
    ops = tmp_path / "ops.json"
    ops.write_text(json.dumps({"tune_ops_name": ["blocks.0.conv", "nonexistent"]}))
    _bad(tmp_path, capsys, monkeypatch,
         ["--job_type", "2", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,8,8",
          "--tune_ops_file", str(ops)], "nonexistent")
    ops.write_text("{not json")
    _bad(tmp_path, capsys, monkeypatch,
         ["--job_type", "2", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,8,8",
          "--tune_ops_file", str(ops)], "not valid JSON")
    ops.write_text("[" * 1000 + "]" * 1000)
    _bad(tmp_path, capsys, monkeypatch,
         ["--job_type", "2", "--model", f"{MODEL}:small_convnet", "--input_shape", "x:1,3,8,8",
          "--tune_ops_file", str(ops)], "nested deeper")


def _run(tmp_path, monkeypatch, capsys, extra=()):
    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    out = tmp_path / "out"
    ops = tmp_path / "ops.json"
    ops.write_text(json.dumps({"tune_ops_name": ["head"], "tune_ops_type": ["conv"]}))
    code = main(["--job_type", "2", "--model", f"{MODEL}:small_convnet", "--input_shape",
                 "x:2,3,16,16", "--scene", "train", "--candidates", "channels_last,no_mkldnn",
                 "--rounds", "5", "--tune_ops_file", str(ops), "--output", str(out), *extra])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.strip().endswith("Aoe process finished")
    results = sorted(glob.glob(str(out / "aoe_result_opat_*.json")), key=os.path.getmtime)
    return json.loads(open(results[-1]).read()), printed


def test_opat_run_writes_artefacts_and_second_run_only_hits(tmp_path, monkeypatch, capsys):
    first, printed = _run(tmp_path, monkeypatch, capsys)
    section = first["OPAT"]
    for key in ("model_baseline_performance(ms)", "model_result_performance(ms)",
                "model_performance_improvement", "opat_tuning_result", "repo_modified_operators",
                "repo_summary"):
        assert key in section
    assert first["basic"]["tuning_name"].startswith("sample_models_small_convnet_")
    summary = section["repo_summary"]
    # three convs + the head linear, selected by type and name
    assert summary["total_num"] == 4 == section["measured_items"]
    assert summary["repo_add_num"] + summary["repo_unsatisfied_num"] == 4
    assert section["whole_model"]["relative_error_in_tolerances"] <= 1.0
    tuned_path = section["tuned_model"]
    assert tuned_path in printed and os.path.isfile(tuned_path)
    assert "/aoe_workspace/sample_models_small_convnet_" in tuned_path
    assert tuned_path.endswith("_tune.pt") and "/tunespace/result/" in tuned_path

    model = aoe_full.load_tuned(tuned_path, source=f"{MODEL}:small_convnet")
    x = torch.randn(2, 3, 16, 16)
    ref = small_convnet().train()
    assert torch.allclose(model(x), ref(x), rtol=1e-4, atol=1e-5)

    second, _ = _run(tmp_path, monkeypatch, capsys)
    s2 = second["OPAT"]
    assert s2["repo_summary"]["repo_hit_num"] == 4 == s2["repo_summary"]["total_num"]
    assert s2["measured_items"] == 0
    assert [i["strategy"] for i in s2["items"]] == [i["strategy"] for i in section["items"]]


def test_repeat_tune_re_measures_and_keeps_or_updates(tmp_path, monkeypatch, capsys):
    _run(tmp_path, monkeypatch, capsys)
    monkeypatch.setenv("REPEAT_TUNE", "True")
    again, _ = _run(tmp_path, monkeypatch, capsys)
    s = again["OPAT"]["repo_summary"]
    assert again["OPAT"]["measured_items"] == 4
    assert s["repo_reserved_num"] + s["repo_update_num"] == 4 == s["total_num"]


def test_sgat_on_an_exported_program(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    x = torch.randn(2, 3, 16, 16)
    program = torch.export.export(small_convnet().eval(), (x,))
    torch.export.save(program, str(tmp_path / "convnet.pt2"))
    out = tmp_path / "out"
    code = main(["--job_type", "1", "--model", str(tmp_path / "convnet.pt2"), "--input_shape",
                 "x:2,3,16,16", "--candidates", "channels_last", "--rounds", "3",
                 "--output", str(out)])
    assert code == 0 and "Aoe process finished" in capsys.readouterr().out
    (result,) = glob.glob(str(out / "aoe_result_sgat_*.json"))
    section = json.loads(open(result).read())["SGAT"]
    assert section["repo_summary"]["total_num"] == 8  # the whole model and 7 subgraphs
    model = aoe_full.load_tuned(section["tuned_model"], source=str(tmp_path / "convnet.pt2"))
    assert torch.allclose(model(x), small_convnet().eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("raised,code,text", [
    (KeyboardInterrupt(), 130, "aoe: interrupted"),
    (RuntimeError("boom\nsecond line"), 1, "aoe: internal error: RuntimeError: boom"),
])
def test_any_failure_is_one_line_with_its_exit_status(tmp_path, capsys, monkeypatch, raised,
                                                      code, text):
    def fail(*args, **kwargs):
        raise raised
    monkeypatch.setattr("aoe_full.cli.tune_subgraphs", fail)
    monkeypatch.setenv("TUNE_BANK_PATH", str(tmp_path / "bank"))
    rc = main(["--job_type", "1", "--model", f"{MODEL}:small_convnet", "--input_shape",
               "x:1,3,8,8", "--output", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == code and len(lines) == 1 and lines[0].startswith(text), lines
    assert not glob.glob(str(tmp_path / "out" / "aoe_result_*"))
