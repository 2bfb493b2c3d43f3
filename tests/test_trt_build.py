"""TensorRT build and engine check.

TensorRT cannot be installed on the machines this project has, so:
- without it, `wisparse build` and `check --engine` must say so in one line and exit 2 (tested here);
- the exported SparseLinear nodes (every member count's op type) must carry exactly the op type, domain and fields
  that plugins/trt_plugin.py registers (its register() run against stand-in decorators, no TensorRT needed);
- the build and engine-check code runs against a stand-in `tensorrt` module that records calls and a stand-in
  TrtRunner backed by ONNX Runtime: this checks our plumbing (plugin registered before parsing, two profiles,
  timing cache, atomic files, the Polygraphy comparison, the report), not TensorRT itself;
- the real thing is at the bottom, skipped without TensorRT and a GPU.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
import types
from pathlib import Path
from unittest import mock

import onnx
import pytest
import torch
from _plans import make_plan, run_cli, save_tiny

from wisparse_export import trt
from wisparse_export.export import export
from wisparse_export.manifest import read_manifest
from wisparse_export.models import load_model
from wisparse_export.onnx_graph import DOMAIN, members_of

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
NO_TRT = "TensorRT is not installed (its libraries cannot be installed on the machines this project has)"
PLUGIN_SOURCE = Path(__file__).resolve().parents[1] / "plugins" / "trt_plugin.py"
PARSER_ONLY = {"plugin_namespace", "plugin_version", "aot"}  # read by TensorRT's ONNX parser, not plugin fields
ONNX_TYPE = {"int": onnx.AttributeProto.INT, "float": onnx.AttributeProto.FLOAT, "str": onnx.AttributeProto.STRING,
             "npt.NDArray[np.int32]": onnx.AttributeProto.INTS, "npt.NDArray[np.int64]": onnx.AttributeProto.INTS,
             "npt.NDArray[np.float32]": onnx.AttributeProto.FLOATS}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt")
    loaded = load_model(str(save_tiny("llama", root / "model")), "float32", "cpu")
    plan = make_plan(loaded)
    export(loaded, plan, root / "fp16", "float16")
    return loaded, plan, root / "fp16"


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
@pytest.mark.parametrize("args", [["build"], ["check", "--engine", "--tokens", "256", "--seq-len", "64"]])
def test_without_tensorrt_build_and_engine_check_exit_2(exported, capsys, args):
    _, _, out = exported
    capsys.readouterr()
    assert run_cli(*args[:1], str(out), *args[1:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: TensorRT is not installed"), err


def registered_plugins() -> dict[str, dict]:
    """plugin id -> {"inputs": [...], "fields": {name: annotation}} as `trt.load_plugin` registers them, read from
    stand-in tensorrt.plugin decorators; each id must get its shape, tactic and ahead-of-time functions, the same
    three functions for every op type of one plugin (reused, not copied)."""
    seen: dict[str, dict] = {}

    def decorator(kind):
        return lambda plugin_id: lambda f: seen.setdefault(plugin_id, {}).setdefault(kind, f)

    trtp = types.SimpleNamespace(**{k: decorator(k) for k in ("register", "autotune", "aot_impl")})
    fake = types.SimpleNamespace(bfloat16=object(), float16=object(), float32=object(), fp8=object(), int8=object(),
                                 plugin=trtp)
    with mock.patch.dict(sys.modules, {"tensorrt": fake, "tensorrt.plugin": trtp}), \
            mock.patch.object(trt, "_registered", False):
        trt.load_plugin()
    found = {}
    for plugin_id, fs in seen.items():
        assert set(fs) == {"register", "autotune", "aot_impl"}, plugin_id
        args = [(p.name, p.annotation) for p in inspect.signature(fs["register"]).parameters.values()]
        found[plugin_id] = {"inputs": [n for n, t in args if t.endswith("TensorDesc")],
                            "fields": {n: t for n, t in args if not t.endswith("TensorDesc")}, "functions": fs}
    return found


@pytest.mark.skipif(not PLUGIN_SOURCE.is_file(), reason="plugins/trt_plugin.py is not there yet")
def test_sparse_nodes_carry_exactly_the_plugin_fields(exported):
    _, plan, out = exported
    plugins = registered_plugins()
    proto = onnx.load(str(out / "sparse.onnx"), load_external_data=False)
    nodes = [n for n in proto.graph.node if members_of(n)]
    assert sum(len(n.name.split("+")) for n in nodes) == len(plan.layers) and len(nodes) == 8  # q/k/v, gate/up fused
    assert {n.op_type for n in nodes} == {"SparseLinear", "SparseLinear2", "SparseLinear3"}
    assert {id(f) for p in ("SparseLinear", "SparseLinear2", "SparseLinear3")
            for f in plugins[f"{DOMAIN}::{p}"]["functions"].values()} == {
        id(f) for f in plugins[f"{DOMAIN}::SparseLinear"]["functions"].values()}  # one plugin under three op types
    for n in nodes:
        plugin = plugins[f"{DOMAIN}::{n.op_type}"]  # TensorRT looks up (op type, version, namespace)
        assert n.domain == DOMAIN and len(n.input) == len(plugin["inputs"]) and not n.overload
        attrs = {a.name: a for a in n.attribute}
        assert set(attrs) - PARSER_ONLY == set(plugin["fields"])
        for name, annotation in plugin["fields"].items():
            assert attrs[name].type == ONNX_TYPE[annotation], name
        assert attrs["plugin_namespace"].s.decode() == DOMAIN and attrs["plugin_version"].s.decode() == "1"


def test_profiles_cover_decode_and_prefill(exported):
    _, _, out = exported
    decode, prefill = trt.profiles(read_manifest(out), max_batch=2, max_prefill=128, max_context=1024)
    assert set(decode) == set(prefill) and len(decode) == 3 + 2 * 2
    assert decode["input_ids"] == [(1, 1), (1, 1), (2, 1)]
    assert decode["past_key_values.1.value"] == [(1, 2, 0, 16), (1, 2, 511, 16), (2, 2, 1023, 16)]
    assert prefill["attention_mask"][2] == (2, 128) and prefill["past_key_values.0.key"][2] == (2, 2, 0, 16)
    with pytest.raises(Exception, match="max-prefill"):
        trt.profiles(read_manifest(out), 1, 4096, 1024)


class FakeTensorRT(types.ModuleType):
    """Just enough of `tensorrt` for build(): records what is called, in order. Not TensorRT's behaviour."""

    def __init__(self, calls: list, plugin_loaded: list):
        super().__init__("tensorrt")
        self.__version__ = "0.0-stand-in"
        calls_, loaded_ = calls, plugin_loaded

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = (lo, opt, hi)

        class Cache:
            def serialize(self):
                return b"timing"

        class Config:
            def __init__(self):
                self.profiles = []

            def set_memory_pool_limit(self, pool, size):
                calls_.append(("workspace", size))

            def create_timing_cache(self, blob):
                calls_.append(("timing_cache_in", blob))
                return Cache()

            def set_timing_cache(self, cache, ignore_mismatch):
                pass

            def add_optimization_profile(self, p):
                self.profiles.append(p)

        class Network:
            pass

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                calls_.append(("flags", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                calls_.append(("build", network.path, [p.shapes["input_ids"] for p in config.profiles]))
                return network.path.encode()  # the stand-in "engine" names its graph

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse(self, blob, path):
                ops = sorted({n.op_type for n in onnx.load_from_string(blob).graph.node if n.domain == DOMAIN})
                calls_.append(("parse", Path(path).name, bool(loaded_), ops))
                self.network.path = path
                return True

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)


def test_build_plumbing_with_a_stand_in(exported, monkeypatch, tmp_path):
    import shutil

    _, _, src = exported
    out = tmp_path / "out"
    shutil.copytree(src, out)
    calls, plugin_loaded = [], []
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(calls, plugin_loaded))
    monkeypatch.setattr(trt, "load_plugin", lambda: plugin_loaded.append(True))
    info = trt.build(out, workspace_gib=1.0, max_prefill=64, max_context=256)
    parses = [c for c in calls if c[0] == "parse"]
    assert [p[1] for p in parses] == ["dense.onnx", "sparse.onnx"] and all(p[2] for p in parses)  # plugin first
    assert ("flags", 2) in calls and ("workspace", 1 << 30) in calls
    builds = [c for c in calls if c[0] == "build"]
    assert builds[0][2] == [((1, 1), (1, 1), (1, 1)), ((1, 1), (1, 64), (1, 64))]  # decode, then prefill
    assert (out / "dense.engine").read_bytes().decode().endswith("dense.onnx")
    assert (out / "timing.cache").read_bytes() == b"timing"
    assert json.loads((out / "engines.json").read_text()) == info and info["dtype"] == "float16"
    # the second build reads the timing cache the first wrote
    trt.build(out, roles=("dense",))
    assert ("timing_cache_in", b"timing") in calls


def test_quantized_export_reaches_tensorrt_as_the_q_plugin(tmp_path, monkeypatch):
    """A quantized (op version 2) sparse graph is parsed as SparseLinearQ nodes carrying exactly the inputs and
    fields plugin wisparse::SparseLinearQ registers; the dense graph as it is; sparse.onnx itself is not rewritten."""
    from wisparse_export.models import quantize_weights
    from wisparse_export.onnx_graph import OP_TYPE_Q, tensorrt_view
    from wisparse_export.quant import FORMATS

    plugins = registered_plugins()  # before load_plugin is stood in for below
    loaded = load_model(str(save_tiny("llama", tmp_path / "model")), "float32", "cpu")
    quantize_weights(loaded.model, FORMATS["fp8_e4m3"])
    export(loaded, make_plan(loaded), tmp_path / "out", "float16")
    before = (tmp_path / "out" / "sparse.onnx").read_bytes()
    calls = []
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(calls, [True]))
    monkeypatch.setattr(trt, "load_plugin", lambda: None)
    trt.build(tmp_path / "out")
    assert [c[3] for c in calls if c[0] == "parse"] == [[], [OP_TYPE_Q, "SparseLinearQ2", "SparseLinearQ3"]]
    assert (tmp_path / "out" / "sparse.onnx").read_bytes() == before
    view = tensorrt_view(onnx.load(str(tmp_path / "out" / "sparse.onnx"), load_external_data=False))
    inits = {t.name: t.data_type for t in view.graph.initializer}
    for n in (n for n in view.graph.node if n.domain == DOMAIN):
        plugin = plugins[f"{DOMAIN}::{n.op_type}"]
        assert plugin["functions"] == plugins[f"{DOMAIN}::{OP_TYPE_Q}"]["functions"]
        assert len(n.input) == len(plugin["inputs"]) == 4
        assert [inits.get(i) for i in n.input[1:]] == [onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT,
                                                       onnx.TensorProto.FLOAT]
        attrs = {a.name: a for a in n.attribute}
        assert set(attrs) - PARSER_ONLY == set(plugin["fields"])
        assert attrs["plugin_namespace"].s.decode() == DOMAIN and attrs["plugin_version"].s.decode() == "1"


def test_build_refuses_float32_exports(tmp_path, monkeypatch):
    loaded = load_model(str(save_tiny("llama", tmp_path / "model")), "float32", "cpu")
    export(loaded, make_plan(loaded), tmp_path / "out")
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT([], []))
    with pytest.raises(Exception, match="float16 or bfloat16 exports"):
        trt.build(tmp_path / "out")


def test_engine_check_plumbing_with_a_stand_in(exported, monkeypatch, tmp_path):
    """check --engine end to end, each 'engine' being an ONNX graph run by ONNX Runtime behind Polygraphy. The
    stand-in dense engine runs sparse.onnx, so each slot of the report must hold what its own engine computed
    against dense.onnx: a report filled from the wrong runner fails."""
    import shutil

    import polygraphy.backend.trt as pg_trt
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    from wisparse_export.check import check

    _, _, src = exported
    out = tmp_path / "out"
    shutil.copytree(src, out)
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT([], []))
    monkeypatch.setattr(trt, "load_plugin", lambda: None)
    trt.build(out)  # the stand-in engines name their graphs; the manifest records them
    (out / "dense.engine").write_text(str(out / "sparse.onnx"))
    profiles = []

    def runner(engine, name=None, optimization_profile=None):
        profiles.append(optimization_profile)
        return OnnxrtRunner(SessionFromOnnx(engine), name=name)

    monkeypatch.setattr(pg_trt, "EngineFromBytes", lambda b: b.decode())
    monkeypatch.setattr(pg_trt, "TrtRunner", runner)
    report = check(out, tokens=256, seq_len=64, engine=True, max_kl=10.0, progress=False)
    assert profiles == [trt.PREFILL, trt.PREFILL, trt.DECODE, trt.DECODE]
    onnx_report = check(out, tokens=256, seq_len=64, progress=False)
    for role in ("dense", "sparse"):  # both engines run sparse.onnx here
        assert report[role]["ppl"] == pytest.approx(onnx_report["sparse"]["ppl"], rel=1e-6)
        assert report[role]["kl"] == pytest.approx(onnx_report["sparse"]["kl"], rel=1e-5)
    assert report["reference"]["ppl"] == pytest.approx(onnx_report["dense"]["ppl"], rel=1e-6)
    assert onnx_report["sparse"]["kl"] > 1e-3 and report["passed"]
    assert report["runtime"].startswith("TensorRT 0.0-stand-in")


def test_build_records_its_files_and_overwrites_none_it_did_not_write(exported, monkeypatch, tmp_path, capsys):
    import shutil

    _, _, src = exported
    out = tmp_path / "out"
    shutil.copytree(src, out)
    (out / "dense.engine").write_text("the user's own engine")
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT([], []))
    monkeypatch.setattr(trt, "load_plugin", lambda: None)
    capsys.readouterr()
    assert run_cli("build", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dense.engine exists and manifest.json does not name it" in err[0], err
    assert (out / "dense.engine").read_text() == "the user's own engine"
    assert "dense_engine" not in read_manifest(out)["files"]
    (out / "dense.engine").unlink()
    assert run_cli("build", str(out)) == 0
    files = read_manifest(out)["files"]
    assert {files[k] for k in ("dense_engine", "sparse_engine", "timing_cache", "engines")} == \
        {"dense.engine", "sparse.engine", "timing.cache", "engines.json"}
    assert all((out / files[k]).is_file() for k in ("dense_engine", "sparse_engine", "timing_cache", "engines"))


@pytest.mark.skipif(not HAS_TRT or not torch.cuda.is_available(), reason=NO_TRT)
def test_build_and_check_engines(exported, tmp_path):
    import shutil

    _, _, src = exported
    out = tmp_path / "out"
    shutil.copytree(src, out)
    assert run_cli("build", str(out), "--max-prefill", "64", "--max-context", "256") == 0
    assert (out / "dense.engine").is_file() and (out / "sparse.engine").is_file()
    report = tmp_path / "r.json"
    assert run_cli("check", str(out), "--engine", "--tokens", "512", "--seq-len", "64", "--quiet",
                   "--max-kl", "1.0", "--json", str(report)) == 0
    r = json.loads(report.read_text())
    assert r["dense"]["kl"] < 1e-2 and r["sparse"]["step_ms"] > 0
