"""`wisparse check`: ONNX Runtime metrics equal `evaluate`'s on the same text, the JSON report, gates and exit
codes, and every bad input as one line with exit 2."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from _plans import make_plan, run_cli, save_tiny

from wisparse_export import data
from wisparse_export.check import check, evaluation_sequences, gates, onnx_metrics
from wisparse_export.evaluate import evaluate
from wisparse_export.export import export
from wisparse_export.manifest import read_manifest, verify_graphs
from wisparse_export.models import load_model
from wisparse_export.runtime import remove

SMALL = ["--tokens", "1024", "--seq-len", "64", "--quiet"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    loaded = load_model(str(save_tiny("llama", root / "model")), "float32", "cpu")
    plan = make_plan(loaded, sparsity=0.4)
    export(loaded, plan, root / "out")
    return loaded, plan, root / "out"


def test_onnx_metrics_match_evaluate_on_the_same_text(exported):
    loaded, plan, out = exported
    report = check(out, tokens=1024, seq_len=64, progress=False)
    seqs = data.sequences(loaded.tokenizer, data.load_text(None, "evaluation"), 64, 1024)
    assert torch.equal(seqs, evaluation_sequences(out, read_manifest(out), None, 1024, 64)[0])
    ref = evaluate(loaded.model, plan, seqs, progress=False)
    remove(loaded.model)
    assert report["tokens"] == ref["tokens"] == 16 * 63
    assert math.isclose(report["sparse"]["ppl"], ref["ppl"], rel_tol=1e-3)  # the bar; measured ~1e-7
    assert math.isclose(report["dense"]["ppl"], ref["dense_ppl"], rel_tol=1e-5)
    assert math.isclose(report["sparse"]["kl"], ref["kl"], rel_tol=1e-3, abs_tol=1e-6)
    assert abs(report["sparse"]["top1_agreement"] - ref["top1_agreement"]) <= 1 / ref["tokens"]
    assert report["dense"]["step_ms"] > 0 and report["sparse"]["step_ms"] > 0
    assert report["passed"] and report["gates"] == {}


def test_gates_report_threshold_value_verdict():
    g = gates(10.0, {"ppl": 12.0, "kl": 0.2, "top1_agreement": 0.8}, max_ppl_increase=0.1, max_kl=0.25,
              min_agreement=0.9)
    assert g["ppl_increase"] == {"threshold": 0.1, "value": pytest.approx(0.2), "verdict": "fail"}
    assert g["kl"]["verdict"] == "pass" and g["top1_agreement"]["verdict"] == "fail"
    assert gates(10.0, {"ppl": 12.0, "kl": 0.2, "top1_agreement": 0.8}) == {}


def test_cli_check_json_and_exit_codes(exported, tmp_path, capsys):
    _, _, out = exported
    report = tmp_path / "r.json"
    assert run_cli("check", str(out), *SMALL, "--max-ppl-increase", "10", "--max-kl", "5", "--min-agreement", "0",
                   "--json", str(report)) == 0
    r = json.loads(report.read_text())
    assert set(r["dense"]) == {"ppl", "step_ms"} and set(r["sparse"]) == {"ppl", "kl", "top1_agreement", "step_ms"}
    assert set(r["gates"]) == {"ppl_increase", "kl", "top1_agreement"} and r["passed"] is True
    assert all(set(g) == {"threshold", "value", "verdict"} for g in r["gates"].values())
    capsys.readouterr()
    assert run_cli("check", str(out), *SMALL, "--max-kl", "0", "--json", str(report)) == 1  # the sparse graph's KL > 0
    assert "gate failed: kl" in capsys.readouterr().err
    assert json.loads(report.read_text())["passed"] is False


def test_bad_inputs_exit_2_in_one_line(exported, tmp_path, capsys):
    _, _, out = exported

    def fails(path, match: str, *extra: str) -> None:
        capsys.readouterr()
        assert run_cli("check", str(path), *SMALL, *extra) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("error: ") and match in last, last

    fails(tmp_path / "missing", "not found")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "no manifest.json")
    fails(out / "sparse.onnx", "is a file")
    # an ONNX file that is not the one the manifest describes
    swapped = tmp_path / "swapped"
    shutil.copytree(out, swapped)
    shutil.copy(out / "dense.onnx", swapped / "sparse.onnx")
    fails(swapped, "does not belong to")
    (swapped / "sparse.onnx").write_bytes(b"not onnx")
    fails(swapped, "not a readable ONNX file")
    # a manifest that is not ours, or names a dtype we do not make
    foreign = tmp_path / "foreign"
    shutil.copytree(out, foreign)
    (foreign / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    fails(foreign, "not a wisparse export manifest")
    m = json.loads((out / "manifest.json").read_text())
    (foreign / "manifest.json").write_text(json.dumps({**m, "dtype": "int8"}))
    fails(foreign, "dtype must be one of")
    fails(out, "text not found", "--text", str(tmp_path / "nope.txt"))
    fails(out, "cannot write", "--json", str(tmp_path / "no" / "r.json"))


def test_polygraphy_comparator_path_reproduces_the_onnx_metrics(exported):
    """check --engine's comparison, with ONNX Runtime runners standing in for the TensorRT ones (no TensorRT here)."""
    pytest.importorskip("polygraphy")
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    from wisparse_export.ort import GraphSession
    from wisparse_export.trt import compare

    _, _, out = exported
    paths = verify_graphs(out, read_manifest(out))
    seqs = evaluation_sequences(out, read_manifest(out), None, 256, 64)[0]
    layout = GraphSession(paths["dense"])
    ref = OnnxrtRunner(SessionFromOnnx(str(paths["dense"])), name="dense.onnx")
    runner = OnnxrtRunner(SessionFromOnnx(str(paths["sparse"])), name="sparse.engine")
    ids = [seqs[i: i + 1] for i in range(len(seqs))]
    got = compare(ref, [runner], [layout.feeds(x.numpy()) for x in ids], ids, progress=False)["sparse.engine"]
    want = onnx_metrics(paths, seqs, progress=False)
    assert math.isclose(got["ppl"], want["sparse"]["ppl"], rel_tol=1e-6)
    assert math.isclose(got["dense_ppl"], want["dense"]["ppl"], rel_tol=1e-6)
    assert math.isclose(got["kl"], want["sparse"]["kl"], rel_tol=1e-5, abs_tol=1e-8)
