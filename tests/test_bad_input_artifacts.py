"""Bad input to `wisparse export` and `wisparse check`, and the situations that used to pass silently: each ends
in exit 2 and exactly one `error:` line (or the right result), with no output or temporary file left and no
user file touched. CPU, tiny models, seconds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import pytest
from _plans import make_plan, run_cli, save_tiny

from wisparse_export.errors import WisparseError
from wisparse_export.export import export
from wisparse_export.manifest import named, read_manifest
from wisparse_export.models import load_model
from wisparse_export.plan import save_plan

SMALL = ["--tokens", "256", "--seq-len", "32", "--quiet"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny Llama folder, a plan for it, its export; and the export of another model of the same shapes
    (other seed) with the same plan, which export itself now refuses: made here with its model check patched
    out, as an older version or a hand-made graph would be."""
    root = tmp_path_factory.mktemp("bad")
    loaded = load_model(str(save_tiny("llama", root / "model")), "float32", "cpu")
    plan = make_plan(loaded)
    save_plan(plan, root / "plan.json")
    export(loaded, plan, root / "out")
    other = load_model(str(save_tiny("llama", root / "other_model", seed=1)), "float32", "cpu")
    with pytest.raises(WisparseError, match="weights differ"):
        export(other, plan, root / "refused")
    assert not (root / "refused").exists()
    with mock.patch("wisparse_export.export.check_plan"):  # weights inside its graphs: a graph copied carries them
        export(other, plan, root / "other_out", external_data=False)
    return root


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under root (hidden ones too) with a hash of its content."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def refused(capsys, args: list[str], match: str, root: Path) -> None:
    """exit 2, exactly one `error:` line naming the problem, nothing under root created, changed or removed."""
    before = tree(root)
    capsys.readouterr()
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
    assert tree(root) == before


# ---- wisparse export: OUT is the user's folder ----

def _user_file(out: Path, made: Path) -> None:
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")


def _our_export_plus_user_file(out: Path, made: Path) -> None:
    shutil.copytree(made / "out", out)
    (out / "notes.txt").write_text("mine")


def _foreign_manifest(out: Path, made: Path) -> None:
    _user_file(out, made)
    (out / "manifest.json").write_text(json.dumps({"format": "wisparse-export", "version": "2"}))


def _a_file(out: Path, made: Path) -> None:
    out.write_text("not a folder")


EXPORT_CASES = {
    "user file in OUT": (_user_file, "holds thesis.tex, which wisparse export did not write"),
    "earlier export plus a user file": (_our_export_plus_user_file, "holds notes.txt, which its manifest does not"),
    "a manifest that is not a valid export's": (_foreign_manifest, "manifest.json wisparse cannot replace"),
    "OUT is a file": (_a_file, "is a file"),
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_export_refuses_an_out_that_is_not_its_own(made, tmp_path, capsys, case):
    setup, match = EXPORT_CASES[case]
    out = tmp_path / "out"
    setup(out, made)
    refused(capsys, ["export", "--model", str(made / "model"), "--plan", str(made / "plan.json"), "-o", str(out),
                     "--quiet"], match, tmp_path)


@pytest.mark.parametrize("where, match", [(".", "contains the current folder"), ("..", "contains the current folder"),
                                          ("model", "contains the model's files")])
def test_export_refuses_out_containing_cwd_or_the_model(made, tmp_path, capsys, monkeypatch, where, match):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(made / "model", work / "model")
    (work / "sub").mkdir()
    monkeypatch.chdir(work / "sub" if where == ".." else work)
    out = {"..": "..", ".": ".", "model": str(work / "model")}[where]
    refused(capsys, ["export", "--model", str(work / "model"), "--plan", str(made / "plan.json"), "-o", out,
                     "--quiet"], match, tmp_path)


def test_reexport_replaces_only_what_the_manifest_names(made, tmp_path, capsys):
    """An earlier export with engines recorded by `wisparse build`: re-exported in place, the graphs are new, the
    engines (built from the replaced graphs) go, nothing else is there; beside it, a live process's temporary stays
    and a killed export's is removed, said in one line."""
    out = tmp_path / "out"
    shutil.copytree(made / "out", out)
    m = json.loads((out / "manifest.json").read_text())
    m["files"]["dense_engine"] = "dense.engine"
    (out / "dense.engine").write_bytes(b"engine")
    (out / "manifest.json").write_text(json.dumps(m))
    dead, live = tmp_path / ".out.wisparse-999999999-abc.tmp", tmp_path / f".out.wisparse-{os.getpid()}-abc.tmp"
    for d in (dead, live):
        d.mkdir()
        (d / "dense.onnx").write_bytes(b"half written")
    (tmp_path / "neighbour.txt").write_text("keep")
    capsys.readouterr()
    assert run_cli("export", "--model", str(made / "model"), "--plan", str(made / "plan.json"), "-o", str(out),
                   "--dtype", "float16", "--quiet") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "removed 1 temporary folder" in err[0] and dead.name in err[0], err
    assert not dead.exists() and live.is_dir() and (tmp_path / "neighbour.txt").read_text() == "keep"
    m = read_manifest(out)
    assert m["dtype"] == "float16" and "dense_engine" not in m["files"]
    assert {p.name for p in out.iterdir()} == {"manifest.json", *named(m["files"])}
    assert {p.name for p in tmp_path.iterdir()} == {"out", live.name, "neighbour.txt"}


# ---- wisparse check: the manifest and the graphs are input too ----

def _set(path: tuple, value):
    def mutate(m: dict) -> None:
        d = m
        for k in path[:-1]:
            d = d[k]
        if value is KeyError:
            d.pop(path[-1])
        else:
            d[path[-1]] = value
    return mutate


MANIFEST_CASES = {
    "files outside OUT (..)": (_set(("files", "dense"), "../other_out/dense.onnx"), "plain file name"),
    "files absolute": (_set(("files", "sparse"), "/etc/passwd"), "plain file name"),
    "files unknown key": (_set(("files", "notes"), "notes.txt"), "files.notes"),
    "version as a string": (_set(("version",), "2"), "version must be an integer"),
    "older version": (_set(("version",), 1), "predates"),
    "newer version": (_set(("version",), 99), "newer than this tool"),
    "no weight samples": (_set(("model", "weights"), KeyError), "model.weights"),
    "a sample short": (lambda m: next(iter(m["model"]["weights"].values())).pop(), "8 finite numbers"),
    "no max_positions": (_set(("model", "max_positions"), KeyError), "model.max_positions"),
    "graph.layers a string": (_set(("graph", "layers"), "2"), "graph.layers"),
    "plan not an object": (_set(("plan",), []), "manifest.plan must be an object"),
    "dtype not the graphs'": (_set(("dtype",), "float16"), "its cache is not float16"),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_check_refuses_a_bad_manifest(made, tmp_path, capsys, case):
    mutate, match = MANIFEST_CASES[case]
    out = tmp_path / "out"
    shutil.copytree(made / "out", out)
    m = json.loads((out / "manifest.json").read_text())
    mutate(m)
    (out / "manifest.json").write_text(json.dumps(m))
    refused(capsys, ["check", str(out), *SMALL], match, tmp_path)


@pytest.mark.parametrize("text, match", [('{"format": "wisparse-export", "format": "x"}', "duplicate key"),
                                         ('{"version": NaN}', "not a JSON number")])
def test_check_reads_the_manifest_as_strict_json(made, tmp_path, capsys, text, match):
    out = tmp_path / "out"
    shutil.copytree(made / "out", out)
    (out / "manifest.json").write_text(text)
    refused(capsys, ["check", str(out), *SMALL], match, tmp_path)


def test_check_refuses_a_symlink_out_of_the_folder(made, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(made / "out", out)
    (out / "dense.onnx").unlink()
    (out / "dense.onnx").symlink_to(made / "out" / "dense.onnx")
    refused(capsys, ["check", str(out), *SMALL], "symbolic link", tmp_path)


@pytest.mark.parametrize("role", ["dense", "sparse"])
def test_check_refuses_a_graph_of_other_weights_with_the_same_plan(made, tmp_path, capsys, role):
    """Same shapes, same plan digest and metadata, different weights: without weight samples this measured
    agreement between two unrelated models."""
    out = tmp_path / "out"
    shutil.copytree(made / "out", out)
    shutil.copy(made / "other_out" / f"{role}.onnx", out / f"{role}.onnx")
    refused(capsys, ["check", str(out), *SMALL], f"{role}.onnx: the weights differ", tmp_path)


def test_check_refuses_external_weights_of_another_model(made, tmp_path, capsys):
    """Weights kept in weights.onnx.data (read back by seeking, not loaded): another model's file is refused."""
    loaded = load_model(str(made / "model"), "float32", "cpu")
    other = load_model(str(made / "other_model"), "float32", "cpu")
    plan = make_plan(loaded)
    export(loaded, plan, tmp_path / "out", "float16", external_data=True)
    with mock.patch("wisparse_export.export.check_plan"):  # export itself refuses the plan on other weights
        export(other, plan, tmp_path / "other", "float16", external_data=True)
    shutil.copy(tmp_path / "other" / "weights.onnx.data", tmp_path / "out" / "weights.onnx.data")
    refused(capsys, ["check", str(tmp_path / "out"), *SMALL], "dense.onnx: the weights differ", tmp_path)


@pytest.mark.parametrize("args, match", [
    (["--max-kl", "-1"], "--max-kl"), (["--max-kl", "nan"], "--max-kl"),
    (["--min-agreement", "1.5"], "--min-agreement"), (["--min-agreement", "-0.1"], "--min-agreement"),
    (["--max-ppl-increase", "-0.5"], "--max-ppl-increase"), (["--max-ppl-increase", "nan"], "--max-ppl-increase"),
    (["--tokens", "0"], "--tokens"), (["--tokens", "-5"], "--tokens"),
    (["--seq-len", "4096"], "exceeds the model's context of 256"),
])
def test_check_refuses_bad_options(made, tmp_path, capsys, args, match):
    out = tmp_path / "out"
    shutil.copytree(made / "out", out)
    refused(capsys, ["check", str(out), "--quiet", *args], match, tmp_path)


def test_check_fails_a_graph_that_computes_nan(made, tmp_path, capsys):
    """A broken sparse graph (its final norm weights NaN) fails with no gate requested: exit 1, named."""
    out = tmp_path / "out"
    shutil.copytree(made / "out", out)
    proto = onnx.load(str(out / "sparse.onnx"))
    norm = next(t for t in proto.graph.initializer if t.name == "model.norm.weight")
    norm.CopyFrom(onnx.numpy_helper.from_array(np.full(tuple(norm.dims), np.nan, np.float32), norm.name))
    onnx.save(proto, str(out / "sparse.onnx"))
    report = tmp_path / "r.json"
    capsys.readouterr()
    assert run_cli("check", str(out), *SMALL, "--json", str(report)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gate failed: finite sparse.ppl, sparse.kl (threshold every metric finite)"], err
    r = json.loads(report.read_text())  # strict JSON: NaN written as null
    assert r["passed"] is False and r["sparse"]["ppl"] is None and r["gates"]["finite"]["verdict"] == "fail"
