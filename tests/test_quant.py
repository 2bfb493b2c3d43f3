"""Quantized weights (FP8 e4m3, INT8; one float32 scale per output channel): the format's round trip, the plan's
optional "weights" field, the model quantized in place, `calibrate --weights`, and the ONNX graphs (DequantizeLinear
in dense.onnx, SparseLinear op version 2 in sparse.onnx) against PyTorch in ONNX Runtime.

Tolerances as in tests/test_export.py: max |logit difference| <= 1e-4 (float32, tiny models).
"""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from _plans import graphs_match_pytorch, make_plan, run_cli, save_tiny
from torch import nn

from wisparse_export import load, quantize, save
from wisparse_export.errors import WisparseError
from wisparse_export.export import export
from wisparse_export.files import read_json, write_json
from wisparse_export.identity import RTOL
from wisparse_export.manifest import read_manifest, verify_graphs
from wisparse_export.models import check_plan, load_model
from wisparse_export.onnx_graph import (
    DOMAIN,
    OP_TYPE_Q,
    members_of,
    op_type,
    quantized_names,
    tensorrt_view,
    weight_name,
)
from wisparse_export.ort import GraphSession, greedy
from wisparse_export.plan import from_dict, load_plan, save_plan
from wisparse_export.quant import FORMATS, by_option, dequantize, within_step
from wisparse_export.quant import quantize as quantize_tensor
from wisparse_export.runtime import apply, remove

FP8, INT8 = FORMATS["fp8_e4m3"], FORMATS["int8"]


def spread_weight(seed: int = 0) -> torch.Tensor:
    """[64, 96] with rows of very different magnitudes, a few outliers and an all-zero row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 96, generator=g) * torch.logspace(-3, 1, 64)[:, None]
    w[3, 5] *= 40.0
    w[7] = 0.0
    return w


@pytest.mark.parametrize("fmt", [FP8, INT8], ids=lambda f: f.name)
def test_round_trip_error_bounds(fmt):
    w = spread_weight()
    q, scale = quantize_tensor(w, fmt)
    assert q.dtype == fmt.storage and q.shape == w.shape and scale.dtype == torch.float32 and scale.shape == (64,)
    assert torch.equal(scale[7], torch.tensor(1.0)) and not q[7].float().any()  # a zero row stays zero
    deq = dequantize(q, scale, torch.float32)
    err, u = (deq - w).abs(), w.abs() / scale[:, None]
    if fmt is INT8:
        assert (err <= 0.5 * scale[:, None] * (1 + 1e-6)).all()
        assert q.abs().max() == 127
    else:
        normal = u >= 2.0 ** -6  # e4m3 keeps 3 mantissa bits there; below, subnormals spaced 2^-9
        assert (err[normal] <= 2.0 ** -4 * w.abs()[normal]).all()
        assert (err[~normal] <= (2.0 ** -10 * scale[:, None].expand_as(w))[~normal] * (1 + 1e-6)).all()
    rows = torch.arange(64) != 7
    assert torch.allclose(deq.abs().amax(1)[rows], w.abs().amax(1)[rows], rtol=1e-6)  # the absmax maps to qmax


def test_bf16_weights_quantize_like_float32_ones_within_a_step():
    """What check_plan relies on: the same weights loaded in bfloat16 quantize to within one grid step."""
    w = spread_weight(1)
    for fmt in (FP8, INT8):
        a = dequantize(*quantize_tensor(w, fmt), torch.float32)
        q, scale = quantize_tensor(w.bfloat16(), fmt)
        b = dequantize(q, scale, torch.float32)
        v = a.abs().maximum(b.abs())
        assert ((a - b).abs() <= fmt.step(v / scale[:, None]) * scale[:, None] + RTOL * v).all()
        assert all(within_step(x, y, float(s), fmt) for x, y, s in zip(a[:, 0].tolist(), b[:, 0].tolist(), scale,
                                                                        strict=True))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("llama"))


def test_quantize_keeps_linears_and_state_dict(llama_dir):
    loaded = load_model(str(llama_dir), "float32", "cpu")
    keys = list(loaded.model.state_dict())
    first = loaded.model.model.layers[0].mlp.down_proj
    before = first.weight.detach().clone()
    quantize(loaded.model, FP8)
    assert type(first) is nn.Linear and list(loaded.model.state_dict()) == keys
    assert torch.equal(first.weight, dequantize(first.weight_q, first.weight_scale, torch.float32))
    assert not torch.equal(first.weight, before) and (first.weight - before).abs().max() < before.abs().max() / 16
    assert not hasattr(loaded.model.lm_head, "weight_q")  # the head and embeddings stay float
    again = first.weight.detach().clone()
    quantize(loaded.model, FP8)  # same format again: nothing changes
    assert torch.equal(first.weight, again)
    with pytest.raises(WisparseError, match="already quantized as fp8_e4m3"):
        quantize(loaded.model, INT8)
    apply(loaded.model, make_plan(loaded))
    with pytest.raises(WisparseError, match="before applying a plan"):
        quantize(loaded.model, FP8)
    remove(loaded.model)


def test_plan_field_round_trip_and_old_plans(llama_dir, tmp_path):
    loaded = load_model(str(llama_dir), "float32", "cpu")
    plain = make_plan(loaded)
    assert plain.weights is None and "weights" not in plain.to_dict()  # unquantized plans are written as before
    old = plain.to_dict()
    assert from_dict(old).digest() == plain.digest()
    quantize(loaded.model, INT8)
    plan = make_plan(loaded)
    assert plan.weights is INT8 and plan.to_dict()["weights"] == {"format": "int8", "scale": "per_output_channel"}
    assert load_plan(save_plan(plan, tmp_path / "p.json")).weights is INT8


BAD_WEIGHTS = {
    "unknown format": ({"format": "fp4", "scale": "per_output_channel"}, "weights.format must be one of"),
    "no scale": ({"format": "int8"}, "exactly \"format\" and \"scale\""),
    "other granularity": ({"format": "int8", "scale": "per_tensor"}, "weights.scale must be 'per_output_channel'"),
    "extra key": ({"format": "int8", "scale": "per_output_channel", "group": 128}, "exactly"),
    "null": (None, "exactly"),
    "a string": ("fp8", "exactly"),
    "format not a string": ({"format": 8, "scale": "per_output_channel"}, "weights.format must be one of"),
}


@pytest.mark.parametrize("case", BAD_WEIGHTS)
def test_bad_plan_weights_field_is_one_line(llama_dir, tmp_path, case, capsys):
    value, message = BAD_WEIGHTS[case]
    loaded = load_model(str(llama_dir), "float32", "cpu")
    d = {**make_plan(loaded).to_dict(), "weights": value}
    with pytest.raises(WisparseError, match="invalid plan: ") as e:
        from_dict(d)
    assert message in str(e.value) and "\n" not in str(e.value)
    write_json(tmp_path / "bad.json", d)
    capsys.readouterr()
    assert run_cli("evaluate", "--model", str(llama_dir), "--plan", str(tmp_path / "bad.json")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: invalid plan: ")


def test_check_plan_follows_the_format(llama_dir, tmp_path):
    """A plan made on fp8 weights passes on the same model quantized the same way (also from a bfloat16 load),
    and is refused, in one line, on the unquantized model, another format, or other weights of the same shapes."""
    loaded = load_model(str(llama_dir), "float32", "cpu")
    quantize(loaded.model, FP8)
    plan = make_plan(loaded)
    check_plan(loaded.model, plan)
    check_plan(quantize(load_model(str(llama_dir), "bfloat16", "cpu").model, FP8), plan)
    cases = [(load_model(str(llama_dir), "float32", "cpu").model, "this model's are not quantized"),
             (quantize(load_model(str(llama_dir), "float32", "cpu").model, INT8), "this model's are int8"),
             (quantize(load_model(str(save_tiny("llama", tmp_path / "other", seed=1)), "float32", "cpu").model, FP8),
              "the weights differ")]
    for model, message in cases:
        with pytest.raises(WisparseError, match=message) as e:
            apply(model, plan)
        assert "\n" not in str(e.value)
    plain = make_plan(load_model(str(llama_dir), "float32", "cpu"))
    with pytest.raises(WisparseError, match="made on unquantized weights"):
        check_plan(loaded.model, plain)


def test_bad_weights_option_is_one_line(llama_dir, tmp_path, capsys):
    with pytest.raises(WisparseError, match="--weights must be one of none, fp8, int8"):
        by_option("fp4")
    capsys.readouterr()
    code = run_cli("calibrate", "--model", str(llama_dir), "--sparsity", "0.5", "--weights", "fp4",
                   "-o", str(tmp_path / "p.json"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0] == "error: --weights must be one of none, fp8, int8, got 'fp4'"
    assert not (tmp_path / "p.json").exists()


WORDS = ("the river ran past old stone walls while children counted boats and the market opened early with bread "
         "fish lanterns rope and songs about the harbour winter and the long road north").split()


def text_file(path, seed: int, docs: int = 30):
    g = torch.Generator().manual_seed(seed)
    lines = [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (50,), generator=g).tolist()) for _ in range(docs)]
    path.write_text("\n".join(lines))
    return path


def test_calibrate_weights_then_evaluate_and_export_follow_the_plan(llama_dir, tmp_path, capsys):
    plan_path, report, out = tmp_path / "p.json", tmp_path / "r.json", tmp_path / "out"
    cal, ev = text_file(tmp_path / "cal.txt", 1), text_file(tmp_path / "ev.txt", 2)
    assert run_cli("calibrate", "--model", str(llama_dir), "--sparsity", "0.5", "--method", "wina", "--weights",
                   "fp8", "--calib-text", str(cal), "--seq-len", "64", "--calib-tokens", "512", "--quiet",
                   "-o", str(plan_path)) == 0
    plan = load_plan(plan_path)
    assert plan.weights is FP8
    # thresholds and samples come from the quantized model: they check against it, not against the float one
    model = load_model(str(llama_dir), "float32", "cpu").model
    with pytest.raises(WisparseError, match="not quantized"):
        check_plan(model, plan)
    check_plan(quantize(model, FP8), plan)
    assert run_cli("evaluate", "--model", str(llama_dir), "--plan", str(plan_path), "--text", str(ev), "--seq-len",
                   "64", "--tokens", "512", "--quiet", "--json", str(report)) == 0
    assert abs(read_json(report, "report")["realized_sparsity"] - 0.5) < 0.1
    assert run_cli("export", "--model", str(llama_dir), "--plan", str(plan_path), "-o", str(out), "--quiet") == 0
    manifest = read_manifest(out)
    assert manifest["weights"] == {"format": "fp8_e4m3", "scale": "per_output_channel"}
    assert manifest["custom_op"]["version"] == 2 and manifest["custom_op"]["plugin_version"] == "2"
    verify_graphs(out, manifest)


@pytest.fixture(scope="module")
def quantized_export(tmp_path_factory):
    """(kind, format name) -> (Loaded quantized, plan, export folder), exported once per module."""
    made = {}

    def get(kind: str, name: str):
        if (kind, name) not in made:
            root = tmp_path_factory.mktemp(f"{kind}-{name}")
            loaded = load_model(str(save_tiny(kind, root / "model")), "float32", "cpu")
            quantize(loaded.model, FORMATS[name])
            plan = make_plan(loaded)
            export(loaded, plan, root / "out")
            made[kind, name] = (loaded, plan, root / "out")
        return made[kind, name]

    return get


CASES = [("llama", "fp8_e4m3"), ("llama", "int8"), ("qwen2", "fp8_e4m3"), ("qwen2", "int8"), ("gemma3", "fp8_e4m3")]


@pytest.mark.parametrize(("kind", "name"), CASES)
def test_onnx_runtime_matches_quantized_pytorch(quantized_export, kind, name):
    loaded, plan, out = quantized_export(kind, name)
    graphs_match_pytorch(loaded, plan, out, seed=1)


def test_quantized_greedy_decode_matches_pytorch(quantized_export):
    loaded, plan, out = quantized_export("llama", "int8")
    prompt = torch.randint(4, 260, (1, 8), generator=torch.Generator().manual_seed(3))
    apply(loaded.model, plan)
    try:
        with torch.no_grad():
            ref = loaded.model.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)[0, 8:].tolist()
    finally:
        remove(loaded.model)
    assert greedy(GraphSession(out / "sparse.onnx"), prompt.numpy(), 16) == ref


@pytest.mark.parametrize("name", ["fp8_e4m3", "int8"])
def test_quantized_graphs_hold_the_stored_form_once(quantized_export, name):
    """Planned weights: quantized initializers with a float32 scale per output channel, shared by both graphs;
    dense.onnx dequantizes them on axis 1 of [in, out]; SparseLinear v2 takes them as inputs 4 and 5."""
    loaded, plan, out = quantized_export("llama", name)
    dense, sparse = (onnx.load(str(out / f"{r}.onnx"), load_external_data=False) for r in ("dense", "sparse"))
    layer = "model.layers.1.mlp.down_proj"
    q_name, scale_name = quantized_names(layer)
    for proto in (dense, sparse):
        inits = {t.name: t for t in proto.graph.initializer}
        assert weight_name(layer) not in inits
        storage = {"int8": onnx.TensorProto.INT8, "fp8_e4m3": onnx.TensorProto.FLOAT8E4M3FN}[name]
        assert inits[q_name].data_type == storage
        assert inits[scale_name].data_type == onnx.TensorProto.FLOAT
        assert list(inits[q_name].dims) == [128, 64] and list(inits[scale_name].dims) == [64]
    dq = [n for n in dense.graph.node if n.op_type == "DequantizeLinear"]
    # one a dense MatMul, 4 a layer: q/k/v and gate/up fused as in sparse.onnx
    assert len(dq) == 8 and all(n.attribute[0].name == "axis" and n.attribute[0].i == 1 for n in dq)
    nodes = [n for n in sparse.graph.node if members_of(n)]
    # 4 nodes a layer: q/k/v and gate/up fused, their stored weights and scales concatenated like W
    assert len(nodes) == 8 and all(list(n.input)[1] == "" and list(n.input)[3] == "" and len(n.input) == 6
                                   for n in nodes)
    node = next(n for n in nodes if n.name == layer)
    assert list(node.input)[4:] == [q_name, scale_name]
    assert {o.domain: o.version for o in sparse.opset_import}[DOMAIN] == 2
    assert not [n for n in sparse.graph.node if n.op_type == "DequantizeLinear"]  # inside the function only
    assert {tuple(n.input) for n in dq} == {tuple(n.input[4:]) for n in nodes}  # the same initializers
    data = {e.value for p in (dense, sparse) for t in p.graph.initializer if t.name == q_name
            for e in t.external_data if e.key == "location"}
    assert data == {"weights.onnx.data"}


def test_check_refuses_a_quantized_graph_that_is_not_the_manifests(quantized_export, tmp_path):
    _, _, out = quantized_export("llama", "fp8_e4m3")
    manifest = read_json(out / "manifest.json", "manifest")
    layer = "model.layers.0.mlp.up_proj"
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in out.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    bad = json.loads(json.dumps(manifest))
    bad["model"]["weights"][layer] = [v * 1.25 + 0.01 for v in bad["model"]["weights"][layer]]
    write_json(copy / "manifest.json", bad)
    with pytest.raises(WisparseError, match="the weights differ"):
        verify_graphs(copy, read_manifest(copy))
    bad = {**manifest, "weights": {"format": "fp4", "scale": "per_output_channel"}}
    write_json(copy / "manifest.json", bad)
    with pytest.raises(WisparseError, match="invalid manifest: weights.format must be one of"):
        read_manifest(copy)
    write_json(copy / "manifest.json", {**manifest, "weights": {"format": "int8", "scale": "per_output_channel"}})
    with pytest.raises(WisparseError, match="is not int8 with a float32 scale"):
        verify_graphs(copy, read_manifest(copy))


def test_sparse_checkpoint_of_a_quantized_model(llama_dir, tmp_path):
    """ws.save writes the dequantized weights; ws.load quantizes them back in the plan's format before applying."""
    loaded = load_model(str(llama_dir), "float32", "cpu")
    quantize(loaded.model, INT8)
    plan = make_plan(loaded)
    save(loaded.model, plan, tmp_path / "ckpt", loaded.tokenizer)
    back, back_plan = load(tmp_path / "ckpt", "float32", "cpu")
    assert back_plan.weights is INT8
    down = back.model.model.layers[0].mlp.down_proj
    ref = loaded.model.model.layers[0].mlp.down_proj
    assert torch.equal(down.weight_q, ref.weight_q) and torch.allclose(down.weight, ref.weight, rtol=1e-6, atol=0)


def test_bench_times_dense_on_the_stored_weights_and_restores_the_thresholds(llama_dir, monkeypatch):
    """A quantized model's bench adds the dense run on the 1-byte weights (every threshold 0) between the dense and
    sparse runs; the plan's thresholds are back in place afterwards."""
    from wisparse_export import bench
    from wisparse_export.runtime import sparse_linears

    loaded = load_model(str(llama_dir), "float32", "cpu")
    model = quantize(loaded.model, FP8)
    plan = make_plan(loaded, sparsity=0.5)
    seen = []
    orig = bench.time_decode
    monkeypatch.setattr(bench, "time_decode", lambda dec, *a, **k: seen.append(
        {n: m.threshold for n, m in sparse_linears(model).items()}) or orig(dec, *a, **k))
    r = bench.run(model, [0.5], steps=3, graphs=False, plan=plan)
    assert r["weights"] == "fp8_e4m3" and r["dense_q_tokens_per_s"] > 0 and r["sparse"][0]["speedup_over_dense_q"] > 0
    assert seen[0] == {} and set(seen[1].values()) == {0.0}  # dense (nothing applied), then dense on the kernels
    want = {n: lp.threshold for n, lp in plan.layers.items()}
    assert seen[2] == want and {n: m.threshold for n, m in sparse_linears(model).items()} == want
    assert all(bool((m.tau > 0).any()) for m in sparse_linears(model).values())


def test_bench_cli_weights(llama_dir, tmp_path, capsys):
    """`bench --weights int8` prints the dense int8 row and writes it; --weights against a plan's format is one line."""
    out = tmp_path / "b.json"
    assert run_cli("bench", "--model", str(llama_dir), "--device", "cpu", "--steps", "2", "--no-graphs",
                   "--weights", "int8", "--sparsity", "0.5", "--quiet", "--json", str(out)) == 0
    assert "dense int8" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["weights"] == "int8" and r["dense_q_ms_per_step"] > 0 and "speedup_over_dense_q" in r["sparse"][0]
    # every path timed --repeats times (default 3), the median reported
    assert r["repeats"] == 3 and len(r["dense_ms_runs"]) == len(r["dense_q_ms_runs"]) == 3
    for ms, runs in ((r["dense_ms_per_step"], r["dense_ms_runs"]), (r["sparse"][0]["ms_per_step"],
                                                                   r["sparse"][0]["ms_runs"])):
        assert len(runs) == 3 and ms == sorted(runs)[1]
    plan = make_plan(load_model(str(llama_dir), "float32", "cpu"), sparsity=0.5)
    save_plan(plan, tmp_path / "p.json")
    capsys.readouterr()
    assert run_cli("bench", "--model", str(llama_dir), "--device", "cpu", "--plan", str(tmp_path / "p.json"),
                   "--weights", "fp8", "--quiet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--weights fp8 differs from the plan's weights (none)" in err[0]


@pytest.mark.parametrize("name", ["fp8_e4m3", "int8"])
def test_tensorrt_view_maps_version_2_nodes_to_the_q_plugin_order(quantized_export, name, tmp_path):
    """What TensorRT parses (`tensorrt_view`, in memory): every op-version-2 node of P members becomes SparseLinearQ
    (P = 1) or SparseLinearQP with the kernel's inputs (X, W_q, tau, W_scale), same weights, same attributes; ONNX
    Runtime runs the view through its functions to the very logits of sparse.onnx. A float export's graph comes
    back unchanged."""
    _, plan, out = quantized_export("llama", name)
    sparse = onnx.load(str(out / "sparse.onnx"), load_external_data=False)
    view = tensorrt_view(sparse)
    before = {n.name: n for n in sparse.graph.node if members_of(n)}
    after = {n.name: n for n in view.graph.node if n.domain == DOMAIN}
    assert set(after) == set(before)
    assert {n.op_type for n in after.values()} == {OP_TYPE_Q, "SparseLinearQ2", "SparseLinearQ3"}
    assert sorted(m for layer in after for m in layer.split("+")) == sorted(plan.layers)  # q/k/v, gate/up fused
    for layer, n in after.items():
        x, _, tau_name, _, q, scale = before[layer].input
        assert list(n.input) == [x, q, tau_name, scale] and q and scale
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == DOMAIN.encode()
        assert sum(attrs["splits"]) == next(t for t in sparse.graph.initializer if t.name == q).dims[1]
        assert len(attrs["splits"]) == len(layer.split("+")) and not n.overload
        assert n.op_type == op_type(len(attrs["splits"]), OP_TYPE_Q) and members_of(n, OP_TYPE_Q) == members_of(
            before[layer])
    assert [n.op_type for n in sparse.graph.node if n.domain == DOMAIN] == [b.op_type for b in before.values()]
    assert not [n for n in sparse.graph.node if n.op_type.startswith(OP_TYPE_Q)]  # untouched
    onnx.save(view, str(out / "view.onnx"))  # beside weights.onnx.data, which it references
    try:
        ids = torch.randint(4, 260, (1, 7), generator=torch.Generator().manual_seed(5)).numpy()
        want = GraphSession(out / "sparse.onnx").logits(ids)
        got = GraphSession(out / "view.onnx").logits(ids)
    finally:
        (out / "view.onnx").unlink()
    assert (got == want).all()
    plain = onnx.load(str(out / "dense.onnx"), load_external_data=False)
    assert tensorrt_view(plain) is plain


def test_weight_only_reference_computes_the_dequantized_linear_and_leaves_no_trace(llama_dir, monkeypatch):
    """gpt-fast's weight-only linear (bench's compiled dense 1-byte reference) is the dequantized product; its
    instance forwards are gone after the timing, so `apply` later finds plain linears; with compile, the result
    names both dense 1-byte paths and divides by the faster (torch.compile stubbed: the flow, not the speed)."""
    from wisparse_export import bench
    from wisparse_export.runtime import sparse_linears

    loaded = load_model(str(llama_dir), "float32", "cpu")
    model = quantize(loaded.model, INT8)
    lin = model.model.layers[0].mlp.down_proj
    x = torch.randn(3, lin.in_features)
    got = bench.weight_only_linear(x, lin.weight_q, lin.weight_scale, lin.bias)
    assert torch.allclose(got, torch.nn.functional.linear(x, lin.weight), atol=1e-5)
    with torch.no_grad():
        want = model(input_ids=torch.tensor([[5, 9, 11]])).logits
        with bench.weight_only(model):
            assert "forward" in vars(lin)
            got = model(input_ids=torch.tensor([[5, 9, 11]])).logits
    assert "forward" not in vars(lin) and torch.allclose(got, want, atol=1e-4)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    r = bench.run(model, [0.5], steps=2, graphs=False, compile=True, plan=make_plan(loaded, sparsity=0.5))
    assert set(r["dense_q_paths"]) == {"our kernels at threshold 0", "torch.compile weight-only"}
    assert r["dense_q_tokens_per_s"] == max(r["dense_q_paths"].values())
    assert r["dense_q_paths"][r["dense_q_path"]] == r["dense_q_tokens_per_s"]
    assert all("forward" not in vars(m) for m in sparse_linears(model).values())


def test_a_weight_only_reference_that_fails_to_compile_is_reported_not_fatal(llama_dir, monkeypatch):
    """Inductor in torch 2.11 fails on the int8 weight-only linear: the run goes on with our dense path, the
    result and the table name the reference that was not timed, and no instance forward is left behind."""
    from torch._inductor.exc import InductorError

    from wisparse_export import bench
    from wisparse_export.report import bench_table
    from wisparse_export.runtime import sparse_linears

    loaded = load_model(str(llama_dir), "float32", "cpu")
    model = quantize(loaded.model, INT8)

    def failing_compile(decoder, on=True):  # eager otherwise (the flow, not the speed)
        if on and any("forward" in vars(m) for m in model.modules()):
            raise InductorError(AssertionError("<class 'torch._inductor.ir.Pointwise'>"), None)
        decoder._logits = decoder.logits

    monkeypatch.setattr(bench.Decoder, "compile", failing_compile)
    r = bench.run(model, [0.5], steps=2, graphs=False, compile=True, plan=make_plan(loaded, sparsity=0.5))
    assert set(r["dense_q_paths"]) == {"our kernels at threshold 0"} and r["sparse"][0]["tokens_per_s"] > 0
    assert r["dense_q_failed"] == {"torch.compile weight-only": "InductorError: AssertionError: <class "
                                                                 "'torch._inductor.ir.Pointwise'>"}
    assert "torch.compile weight-only not timed: it failed to compile (InductorError" in bench_table(r)
    assert all("forward" not in vars(m) for m in sparse_linears(model).values())
