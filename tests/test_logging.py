"""Output policy and provenance: --quiet silences every progress bar (ours and other libraries'), --verbose shows
debug logs, the library leaves transformers' logging as it found it, the refit pass and TensorRT builds say what
they are doing, and plans and manifests record the software and model revision that made them (older files load).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _plans import make_plan, run_cli, save_tiny
from tqdm.auto import tqdm

from wisparse_export import cli, pipeline, trt
from wisparse_export.data import Text
from wisparse_export.errors import WisparseError
from wisparse_export.export import export
from wisparse_export.manifest import MANIFEST, read_manifest
from wisparse_export.models import Loaded, load_model, revision
from wisparse_export.plan import from_dict, load_plan, save_plan

WISPARSE = [sys.executable, "-m", "wisparse_export"]
BAR = ("it/s", "%|", "s/it")  # what any tqdm bar prints


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("logging")
    folder = save_tiny("llama", root / "model")
    loaded = load_model(str(folder), "float32", "cpu", progress=False)
    plan = make_plan(loaded)
    save_plan(plan, root / "plan.json")
    return loaded, plan, folder, root / "plan.json"


def wisparse(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([*WISPARSE, *args], capture_output=True, text=True, env=env, timeout=600)


def test_quiet_leaves_stderr_free_of_bars_and_verbose_shows_debug_logs(tiny, tmp_path):
    _, _, folder, _ = tiny
    plan = tmp_path / "p.json"
    calib = ["calibrate", "--model", str(folder), "--sparsity", "0.5", "--method", "wina", "--calib-tokens", "512",
             "--seq-len", "64", "-o", str(plan)]
    quiet = wisparse(*calib, "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert not any(b in quiet.stderr for b in BAR), quiet.stderr
    evaluate = ["evaluate", "--model", str(folder), "--plan", str(plan), "--tokens", "256", "--seq-len", "64"]
    shown = wisparse(*evaluate)
    assert shown.returncode == 0 and "evaluate" in shown.stderr and any(b in shown.stderr for b in BAR)
    assert "DEBUG" not in shown.stderr and "loading configuration file" not in shown.stderr
    quiet = wisparse(*evaluate, "--quiet")
    assert quiet.returncode == 0 and not any(b in quiet.stderr for b in BAR), quiet.stderr
    verbose = wisparse(*evaluate, "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert "DEBUG wisparse_export.models: loading" in verbose.stderr  # ours
    assert "loading configuration file" in verbose.stderr  # transformers' own (info and debug) logs


def test_quiet_and_verbose_together_are_refused(tiny, capsys):
    _, _, folder, plan = tiny
    capsys.readouterr()
    assert run_cli("evaluate", "--model", str(folder), "--plan", str(plan), "--quiet", "--verbose") == 2
    assert capsys.readouterr().err.strip() == "error: give --quiet or --verbose, not both"


def test_quiet_silences_a_library_bar_that_asks_to_be_shown_and_is_undone(capsys):
    """transformers' GGUF conversion bar is a plain tqdm nothing can switch off: --quiet must still hide it."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    capsys.readouterr()
    with cli.output_policy(quiet=True, verbose=False):
        for _ in tqdm(range(3), desc="some library", disable=False, mininterval=0):
            pass
    assert capsys.readouterr().err == ""
    for _ in tqdm(range(3), desc="some library", mininterval=0):
        pass
    assert "some library" in capsys.readouterr().err  # bars are back after the command
    assert hf_logging.get_verbosity() == before


@pytest.mark.slow
def test_quiet_hides_the_gguf_conversion_bar(capfd):
    with cli.output_policy(quiet=True, verbose=False):
        load_model(None, "float32", "cpu")
    err = capfd.readouterr().err
    assert "GGUF" not in err and not any(b in err for b in BAR), err


def test_load_model_leaves_transformers_logging_as_it_was(tiny):
    from transformers.utils import logging as hf_logging

    _, _, folder, _ = tiny
    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_info()
    try:
        load_model(str(folder), "float32", "cpu", progress=False)
        assert hf_logging.get_verbosity() == logging.INFO
        assert hf_logging.is_progress_bar_enabled()  # progress=False hid the bars for that load only
    finally:
        hf_logging.set_verbosity(before)


def test_refit_pass_is_labelled_refit(tiny, capsys):
    loaded, _, _, _ = tiny
    text = Text(["The quick brown fox jumps over the lazy dog. " * 8 + f"Line {i}." for i in range(10)], "test text")
    capsys.readouterr()
    pipeline.calibrate(loaded, text, 0.5, method="wina", seq_len=64, tokens=256)
    err = capsys.readouterr().err
    assert "calibrate:" in err and "refit:" in err


def test_build_prints_a_line_per_engine_and_quiet_none(tiny, tmp_path, monkeypatch, capsys):
    from test_trt_build import FakeTensorRT

    loaded, plan, _, _ = tiny
    out = tmp_path / "out"
    export(loaded, plan, out, "float16")
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT([], []))
    monkeypatch.setattr(trt, "load_plugin", lambda: None)
    capsys.readouterr()
    assert run_cli("build", str(out)) == 0
    err = capsys.readouterr().err.splitlines()
    assert [" ".join(line.split()[:2]) for line in err if line.startswith("buil")] == \
        ["building dense.engine", "built dense.engine", "building sparse.engine", "built sparse.engine"]
    assert err[0].startswith("building dense.engine (1/2) from dense.onnx") and " s (" in err[1]
    assert run_cli("build", str(out), "--quiet") == 0
    assert capsys.readouterr().err == ""


def test_heartbeat_while_a_long_call_runs():
    lines = []
    with trt.heartbeat(lines.append, "building x.engine", every=0.02):
        time.sleep(0.15)
    n = len(lines)
    time.sleep(0.05)
    assert n >= 2 and len(lines) == n and lines[0].startswith("  still building x.engine (")


def version(name: str) -> str:
    return importlib.metadata.version(name)


def test_plans_and_manifests_record_provenance(tiny, tmp_path):
    loaded, plan, folder, plan_path = tiny
    config_hash = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()[:16]
    d = json.loads(plan_path.read_text())
    assert d["provenance"] == {"wisparse-export": version("wisparse-export"), "torch": version("torch"),
                               "transformers": version("transformers")}
    assert d["model"]["revision"] == f"config-sha256:{config_hash}"
    assert load_plan(plan_path).provenance == d["provenance"]
    export(loaded, plan, tmp_path / "out")
    m = read_manifest(tmp_path / "out")
    assert m["provenance"]["onnx"] == version("onnx") and m["provenance"]["onnxruntime"] == version("onnxruntime")
    assert m["provenance"]["torch"] == version("torch") and m["model"]["revision"] == f"config-sha256:{config_hash}"


def test_revision_of_hub_and_gguf_models(tiny, tmp_path):
    loaded, _, _, _ = tiny
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF not really a model")
    assert revision(Loaded(loaded.model, None, str(gguf))) == \
        "gguf-sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()[:16]
    assert revision(Loaded(loaded.model, None, "random:llama-3.1-8b")) is None
    loaded.model.config._commit_hash = "0123abcd" * 5
    try:
        assert revision(Loaded(loaded.model, None, "org/model")) == "hub:" + "0123abcd" * 5
    finally:
        loaded.model.config._commit_hash = None


def test_files_without_provenance_still_load(tiny, tmp_path):
    loaded, plan, _, plan_path = tiny
    d = json.loads(plan_path.read_text())
    del d["provenance"], d["model"]["revision"]
    old = from_dict(d)
    assert old.provenance is None and "provenance" not in old.to_dict()  # written back as it was read
    out = tmp_path / "out"
    export(loaded, plan, out)
    m = json.loads((out / MANIFEST).read_text())
    del m["provenance"], m["model"]["revision"]
    (out / MANIFEST).write_text(json.dumps(m))
    assert "provenance" not in read_manifest(out)


@pytest.mark.parametrize("bad", [["torch"], {"torch": 2}, "2.4"])
def test_bad_provenance_is_one_line(tiny, tmp_path, bad):
    loaded, plan, _, plan_path = tiny
    d = json.loads(plan_path.read_text())
    d["provenance"] = bad
    with pytest.raises(WisparseError, match=r"^invalid plan: provenance must be an object"):
        from_dict(d)
    d = json.loads(plan_path.read_text())
    d["model"]["revision"] = 7
    with pytest.raises(WisparseError, match=r"^invalid plan: model.revision must be a string or null"):
        from_dict(d)
    out = tmp_path / "out"
    export(loaded, plan, out)
    m = json.loads((out / MANIFEST).read_text())
    m["provenance"] = bad
    (out / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(WisparseError, match=r"invalid manifest: provenance must be an object"):
        read_manifest(out)

