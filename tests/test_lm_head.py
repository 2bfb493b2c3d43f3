"""A quantized lm_head (FP8 e4m3, INT8; `--lm-head`): quantized like a block linear, untied from a tied embedding
first (the embedding bit-identical), the plan's optional "lm_head" field, `apply`/`remove` on the kernels at
threshold 0 outside sparsity accounting, DequantizeLinear -> MatMul in both ONNX graphs against PyTorch in ONNX
Runtime, the CLI, and bench saying what the lm_head runs in each path.

Tolerances as in tests/test_quant.py: max |logit difference| <= 1e-4 (float32, tiny models).
"""

from __future__ import annotations

import json

import onnx
import pytest
import torch
import torch.nn.functional as F
from _plans import gpu, graphs_match_pytorch, make_plan, run_cli, save_tiny, tiny_model
from test_quant import text_file
from torch import nn

from wisparse_export import bench, kernels, load, quantize, save
from wisparse_export.errors import WisparseError
from wisparse_export.export import export
from wisparse_export.files import write_json
from wisparse_export.manifest import read_manifest, verify_graphs
from wisparse_export.models import check_plan, find_blocks, head_format, load_model, quantize_lm_head
from wisparse_export.onnx_graph import quantized_names
from wisparse_export.plan import from_dict, load_plan, save_plan
from wisparse_export.quant import FORMATS, by_option, dequantize
from wisparse_export.report import bench_table
from wisparse_export.runtime import QuantizedHead, apply, remove, sparse_linears, track_sparsity

FP8, INT8 = FORMATS["fp8_e4m3"], FORMATS["int8"]
SMALL = ["--tokens", "1024", "--seq-len", "64", "--quiet"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """llama: an untied head; qwen2: a head tied to the embedding."""
    root = tmp_path_factory.mktemp("lm-head")
    return {kind: save_tiny(kind, root / kind) for kind in ("llama", "qwen2")}


@pytest.fixture
def cpu_kernels(monkeypatch):
    """`to_kernels` converts CPU bfloat16 linears (layout, the head) without compiling or loading any kernel."""
    monkeypatch.setattr(kernels, "supports", lambda w, fmt=None: w.dtype == torch.bfloat16)
    monkeypatch.setattr(kernels, "preload", lambda layers: list(layers))


def test_quantize_lm_head_keeps_the_linear_and_its_state_dict(dirs):
    model = load_model(str(dirs["llama"]), "float32", "cpu").model
    keys, head = list(model.state_dict()), model.lm_head
    before = head.weight.detach().clone()
    quantize_lm_head(model, INT8)
    assert type(head) is nn.Linear and list(model.state_dict()) == keys and head.weight_format is INT8
    assert head.weight_q.dtype == torch.int8 and head.weight_q.shape == before.shape
    assert torch.equal(head.weight, dequantize(head.weight_q, head.weight_scale, torch.float32))
    assert not torch.equal(head.weight, before) and (head.weight - before).abs().max() <= head.weight_scale.max()
    assert not hasattr(model.model.layers[0].mlp.down_proj, "weight_q")  # blocks untouched without --weights
    again = head.weight.detach().clone()
    quantize_lm_head(model, INT8)
    assert torch.equal(head.weight, again)
    with pytest.raises(WisparseError, match="lm_head is already quantized as int8"):
        quantize_lm_head(model, FP8)


def test_a_tied_head_is_untied_and_the_embedding_kept_bit_for_bit(dirs, tmp_path):
    loaded = load_model(str(dirs["qwen2"]), "float32", "cpu")
    model = loaded.model
    embed = model.get_input_embeddings().weight
    assert model.lm_head.weight is embed
    values = embed.detach().clone()
    quantize(model, FP8, FP8)
    assert model.get_input_embeddings().weight is embed and torch.equal(embed, values)
    assert model.lm_head.weight is not embed and model.config.tie_word_embeddings is False
    head = model.lm_head
    assert torch.equal(head.weight, dequantize(head.weight_q, head.weight_scale, torch.float32))
    assert not torch.equal(head.weight, values)
    ids = torch.randint(4, 260, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        logits = model(input_ids=ids).logits
    want = F.linear(hidden, dequantize(head.weight_q, head.weight_scale, torch.float32))
    assert torch.equal(logits, want)
    # a sparse checkpoint saves the head untied and loads back to the same quantized head and embedding
    plan = make_plan(loaded)
    assert plan.lm_head is FP8 and plan.weights is FP8
    save(model, plan, tmp_path / "ckpt", loaded.tokenizer)
    back, _ = load(tmp_path / "ckpt", "float32", "cpu")
    assert torch.equal(back.model.lm_head.weight_q.float(), head.weight_q.float())
    assert torch.equal(back.model.get_input_embeddings().weight, values)
    remove(back.model)


def test_plan_field_round_trip_and_old_plans(dirs, tmp_path):
    loaded = load_model(str(dirs["llama"]), "float32", "cpu")
    plain = make_plan(loaded)
    assert plain.lm_head is None and "lm_head" not in plain.to_dict()  # written as before
    assert from_dict(plain.to_dict()).lm_head is None  # an older plan: the head in the model's dtype
    quantize(loaded.model, None, INT8)
    plan = make_plan(loaded)
    assert plan.weights is None and plan.lm_head is INT8
    assert plan.to_dict()["lm_head"] == {"format": "int8", "scale": "per_output_channel"}
    back = load_plan(save_plan(plan, tmp_path / "p.json"))
    assert back.lm_head is INT8 and back.digest() == plan.digest() != plain.digest()


BAD_HEAD = {
    "unknown format": ({"format": "fp4", "scale": "per_output_channel"}, "lm_head.format must be one of"),
    "a string": ("fp8", "lm_head must be an object with exactly"),
    "null": (None, "lm_head must be an object with exactly"),
    "other granularity": ({"format": "fp8_e4m3", "scale": "per_tensor"}, "lm_head.scale must be"),
}


@pytest.mark.parametrize("case", BAD_HEAD)
def test_bad_plan_lm_head_field_is_one_line(dirs, tmp_path, case, capsys):
    value, message = BAD_HEAD[case]
    d = {**make_plan(load_model(str(dirs["llama"]), "float32", "cpu")).to_dict(), "lm_head": value}
    with pytest.raises(WisparseError, match="invalid plan: ") as e:
        from_dict(d)
    assert message in str(e.value) and "\n" not in str(e.value)
    write_json(tmp_path / "bad.json", d)
    capsys.readouterr()
    assert run_cli("evaluate", "--model", str(dirs["llama"]), "--plan", str(tmp_path / "bad.json")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: invalid plan: lm_head")


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_check_plan_refuses_another_lm_head_format_in_one_line(dirs, kind):
    """Checked before the fingerprint (untying a tied head changes it), so the message names the lm_head."""
    def fresh(head=None):
        return quantize(load_model(str(dirs[kind]), "float32", "cpu").model, FP8, head)

    loaded = load_model(str(dirs[kind]), "float32", "cpu")
    quantize(loaded.model, FP8, FP8)
    plan = make_plan(loaded)
    check_plan(fresh(FP8), plan)
    plain = make_plan(load_model(str(dirs[kind]), "float32", "cpu"))
    for model, p, message in [(fresh(), plan, "made with an fp8_e4m3 lm_head .* this model has an unquantized"),
                              (fresh(INT8), plan, "made with an fp8_e4m3 lm_head .* this model has an int8 lm_head"),
                              (fresh(FP8), plain, "made with an unquantized lm_head .* has an fp8_e4m3 lm_head")]:
        with pytest.raises(WisparseError, match=message) as e:
            apply(model, p)
        assert "\n" not in str(e.value) and "quantize(model, plan.weights, plan.lm_head)" in str(e.value)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_apply_puts_the_head_on_the_kernels_outside_sparsity_and_remove_restores_it(dirs, cpu_kernels, kind):
    loaded = load_model(str(dirs[kind]), "bfloat16", "cpu")
    model = quantize(loaded.model, FP8, FP8)
    head = model.lm_head
    state = {k: v.clone() for k, v in model.state_dict().items()}
    q = head.weight_q.clone()
    ids = torch.randint(4, 260, (1, 6), generator=torch.Generator().manual_seed(1))
    plan = make_plan(loaded, sparsity=0.5)
    apply(model, plan)
    assert type(head) is QuantizedHead and model.lm_head is head and head.threshold == 0.0
    assert head.weight_q.stride(0) == 1 and torch.equal(head.weight_q, q)  # kernel layout, same values
    assert not bool(head.tau.any()) and "lm_head" not in sparse_linears(model)
    assert list(model.state_dict()) == list(state)
    with torch.no_grad(), track_sparsity(model) as realized:
        model(input_ids=ids)
        assert set(realized()) == set(plan.layers)  # the head is never counted
    remove(model)
    assert type(head) is nn.Linear and head.weight_q.is_contiguous() and torch.equal(head.weight_q, q)
    assert not hasattr(head, "tau")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_apply_on_cpu_leaves_the_head_a_plain_linear(dirs):
    loaded = load_model(str(dirs["llama"]), "float32", "cpu")
    quantize(loaded.model, None, FP8)
    apply(loaded.model, make_plan(loaded))
    assert type(loaded.model.lm_head) is nn.Linear
    remove(loaded.model)


@pytest.fixture(scope="module")
def head_export(tmp_path_factory):
    """(kind, block format, head format) -> (Loaded, plan, export folder), exported once per module."""
    made = {}

    def get(kind: str, blocks: str | None, head: str):
        key = (kind, blocks, head)
        if key not in made:
            root = tmp_path_factory.mktemp(f"{kind}-{blocks}-{head}")
            loaded = load_model(str(save_tiny(kind, root / "model")), "float32", "cpu")
            quantize(loaded.model, FORMATS.get(blocks), FORMATS[head])
            plan = make_plan(loaded)
            export(loaded, plan, root / "out")
            made[key] = (loaded, plan, root / "out")
        return made[key]

    return get


EXPORTS = [("llama", "fp8_e4m3", "fp8_e4m3"), ("qwen2", "fp8_e4m3", "fp8_e4m3"), ("llama", None, "int8"),
           ("qwen2", "int8", "int8"), ("gemma3", "fp8_e4m3", "int8")]


@pytest.mark.parametrize(("kind", "blocks", "head"), EXPORTS)
def test_onnx_runtime_matches_pytorch_with_a_quantized_head(head_export, kind, blocks, head):
    loaded, plan, out = head_export(kind, blocks, head)
    graphs_match_pytorch(loaded, plan, out, seed=2)
    manifest = read_manifest(out)
    assert manifest["lm_head"] == {"format": head, "scale": "per_output_channel"}
    verify_graphs(out, manifest)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_both_graphs_dequantize_the_head_and_a_tied_embedding_keeps_its_float_initializer(head_export, kind):
    loaded, _, out = head_export(kind, "fp8_e4m3", "fp8_e4m3")
    q_name, scale_name = quantized_names("lm_head")
    for role in ("dense", "sparse"):
        proto = onnx.load(str(out / f"{role}.onnx"), load_external_data=False)
        inits = {t.name: t for t in proto.graph.initializer}
        assert inits[q_name].data_type == onnx.TensorProto.FLOAT8E4M3FN and list(inits[q_name].dims) == [64, 260]
        assert inits[scale_name].data_type == onnx.TensorProto.FLOAT and list(inits[scale_name].dims) == [260]
        assert "lm_head.weight_t" not in inits
        nodes = {o: n for n in proto.graph.node for o in n.output}
        mm = next(n for n in proto.graph.node if n.name == "lm_head")
        w = mm.input[1]
        while nodes[w].op_type == "Cast":
            w = nodes[w].input[0]
        dq = nodes[w]
        assert dq.op_type == "DequantizeLinear" and list(dq.input) == [q_name, scale_name]
        assert dq.attribute[0].name == "axis" and dq.attribute[0].i == 1
        embed = inits["embed_tokens.weight"]  # the embedding Gather reads its own float initializer
        assert embed.data_type == onnx.TensorProto.FLOAT and list(embed.dims) == [260, 64]
        gather = next(n for n in proto.graph.node if n.op_type == "Gather")
        assert gather.input[0] == "embed_tokens.weight"
        assert not [n for n in proto.graph.node if n.op_type == "Transpose" and "embed_tokens.weight" in n.input]
    assert torch.equal(loaded.model.get_input_embeddings().weight, torch.frombuffer(
        bytearray(embed_bytes(out)), dtype=torch.float32).reshape(260, 64))  # bit for bit the loaded embedding
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False


def embed_bytes(out) -> bytes:
    """The raw bytes of embed_tokens.weight as the export stored them (external data, or inline)."""
    proto = onnx.load(str(out / "dense.onnx"))
    return next(t for t in proto.graph.initializer if t.name == "embed_tokens.weight").raw_data


def test_check_passes_on_a_quantized_head(head_export):
    _, _, out = head_export("qwen2", "fp8_e4m3", "fp8_e4m3")
    assert run_cli("check", str(out), *SMALL, "--max-ppl-increase", "10", "--max-kl", "5") == 0


def test_bad_lm_head_option_is_one_line(dirs, tmp_path, capsys):
    with pytest.raises(WisparseError, match="--lm-head must be one of none, fp8, int8"):
        by_option("fp4", "--lm-head")
    for command in (["calibrate", "--sparsity", "0.5", "-o", str(tmp_path / "p.json")],
                    ["bench", "--device", "cpu", "--steps", "2"]):
        capsys.readouterr()
        assert run_cli(*command, "--model", str(dirs["llama"]), "--lm-head", "fp4") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0] == "error: --lm-head must be one of none, fp8, int8, got 'fp4'"
    assert not (tmp_path / "p.json").exists()


def test_calibrate_lm_head_then_evaluate_export_and_bench_follow_the_plan(dirs, tmp_path, capsys):
    plan_path, out, report = tmp_path / "p.json", tmp_path / "out", tmp_path / "b.json"
    assert run_cli("calibrate", "--model", str(dirs["qwen2"]), "--sparsity", "0.5", "--method", "wina", "--weights",
                   "fp8", "--lm-head", "int8", "--calib-text", str(text_file(tmp_path / "cal.txt", 1)),
                   "--seq-len", "64", "--calib-tokens", "512", "--quiet", "-o", str(plan_path)) == 0
    plan = load_plan(plan_path)
    assert plan.weights is FP8 and plan.lm_head is INT8
    model = quantize(load_model(str(dirs["qwen2"]), "float32", "cpu").model, FP8)
    with pytest.raises(WisparseError, match="made with an int8 lm_head"):
        check_plan(model, plan)
    assert run_cli("evaluate", "--model", str(dirs["qwen2"]), "--plan", str(plan_path), "--text",
                   str(text_file(tmp_path / "ev.txt", 2)), "--seq-len", "64", "--tokens", "512", "--quiet") == 0
    assert run_cli("export", "--model", str(dirs["qwen2"]), "--plan", str(plan_path), "-o", str(out), "--quiet") == 0
    assert read_manifest(out)["lm_head"]["format"] == "int8"
    capsys.readouterr()
    assert run_cli("bench", "--model", str(dirs["qwen2"]), "--device", "cpu", "--plan", str(plan_path), "--steps",
                   "2", "--no-graphs", "--quiet", "--json", str(report)) == 0
    printed = capsys.readouterr().out
    r = json.loads(report.read_text())
    plain = "float32 (CPU matmul, the dequantized int8 weight)"
    assert r["lm_head"] == {"format": "int8", "dense": plain, "dense_q": plain, "sparse": plain}
    assert f"lm_head: {plain} in dense float32 and dense fp8 and sparse" in printed
    assert run_cli("bench", "--model", str(dirs["qwen2"]), "--device", "cpu", "--plan", str(plan_path),
                   "--lm-head", "fp8", "--quiet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lm-head fp8 differs from the plan's lm_head (int8)" in err[0]


def test_bench_cli_lm_head_without_block_weights(dirs, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert run_cli("bench", "--model", str(dirs["llama"]), "--device", "cpu", "--steps", "2", "--no-graphs",
                   "--lm-head", "fp8", "--sparsity", "0.5", "--quiet", "--json", str(out)) == 0
    r = json.loads(out.read_text())
    assert r["weights"] is None and "dense_q_tokens_per_s" not in r and r["lm_head"]["format"] == "fp8_e4m3"
    assert set(r["lm_head"]) == {"format", "dense", "sparse"}
    assert "lm_head: float32 (CPU matmul, the dequantized fp8_e4m3 weight) in dense and sparse" \
        in capsys.readouterr().out


def test_head_paths_name_the_kernel_the_rows_and_the_compiled_reference(dirs, cpu_kernels):
    """On the kernels (converted here on CPU bfloat16), dense_q and sparse read the head at threshold 0 for decode
    rows; the dense run reads the dequantized weight; more rows than kernels.Q_ROWS take the dequantized weight."""
    loaded = load_model(str(dirs["llama"]), "bfloat16", "cpu")
    model = quantize(loaded.model, FP8, FP8)
    apply(model, make_plan(loaded))
    ours, plain = "fp8_e4m3 (our kernel, threshold 0)", "bfloat16 (CPU matmul, the dequantized fp8_e4m3 weight)"
    paths = bench.head_paths(model, 1, "our kernels at threshold 0")
    assert paths == {"format": "fp8_e4m3", "dense": plain, "dense_q": ours, "sparse": ours}
    assert bench.head_paths(model, kernels.Q_ROWS + 1, None) == {"format": "fp8_e4m3", "dense": plain,
                                                                  "sparse": plain}
    assert bench.head_paths(model, 1, bench.WEIGHT_ONLY)["dense_q"] == f"fp8_e4m3 ({bench.WEIGHT_ONLY})"
    table = bench_table({"weights": "fp8_e4m3", "dtype": "bfloat16", "dense_tokens_per_s": 1.0,
                         "dense_ms_per_step": 1.0, "dense_q_tokens_per_s": 2.0, "dense_q_ms_per_step": 0.5,
                         "sparse": [], "lm_head": paths})
    assert table.splitlines()[-1] == f"lm_head: {plain} in dense bf16; {ours} in dense fp8 and sparse"
    remove(model)
    assert head_format(model) is FP8 and type(model.lm_head) is nn.Linear


def test_weight_only_reference_covers_the_quantized_head(dirs):
    model = quantize(load_model(str(dirs["llama"]), "float32", "cpu").model, INT8, INT8)
    head = model.lm_head
    x = torch.randn(2, 64)
    with bench.weight_only(model):
        assert "forward" in head.__dict__
        torch.testing.assert_close(head(x), F.linear(x, head.weight), rtol=1e-5, atol=1e-5)
    assert "forward" not in head.__dict__


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int8"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_quantized_head_on_a_cuda_model_matches_the_dequantized_path(monkeypatch, fmt, kind):
    """A quantized bf16 CUDA model with a quantized head, plan at threshold 0: decode (1 row) runs the head on our
    kernel (sparse_linear_q_op) and its logits equal the PyTorch path on the dequantized weights; prefill (many
    rows) runs the head on cuBLAS."""
    def model():
        return quantize(tiny_model(kind).to(device="cuda", dtype=torch.bfloat16), FORMATS[fmt], FORMATS[fmt])

    torch_path = model()
    m = model()
    plan = bench.uniform_plan(m, {n: None for b in find_blocks(m) for n in b.linears}, 0.0)  # every threshold 0
    assert plan.lm_head is FORMATS[fmt] and set(lp.threshold for lp in plan.layers.values()) == {0.0}
    apply(m, plan)
    assert type(m.lm_head) is QuantizedHead and m.lm_head.weight_q.stride(0) == 1
    heads = []
    orig = kernels.dispatch.sparse_linear_q_op
    monkeypatch.setattr(kernels.dispatch, "sparse_linear_q_op",
                        lambda *a: heads.append(a[1].shape[1] == 260) or orig(*a))
    g = torch.Generator(device="cuda").manual_seed(0)
    for ids in (torch.randint(0, 260, (1, 1), device="cuda", generator=g),
                torch.randint(0, 260, (2, 9), device="cuda", generator=g)):
        heads.clear()
        with torch.no_grad():
            want = torch_path(input_ids=ids).logits.double()
            got = m(input_ids=ids).logits.double()
        assert any(heads) == (ids.numel() == 1), ids.shape
        assert (got - want).norm() / want.norm() < 2e-2, ids.shape
    remove(m)
    assert type(m.lm_head) is nn.Linear


def test_a_bad_manifest_lm_head_is_one_line(head_export, tmp_path):
    _, _, out = head_export("llama", None, "int8")
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in out.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((out / "manifest.json").read_text())
    write_json(copy / "manifest.json", {**manifest, "lm_head": {"format": "fp4", "scale": "per_output_channel"}})
    with pytest.raises(WisparseError, match="invalid manifest: lm_head.format must be one of") as e:
        read_manifest(copy)
    assert "\n" not in str(e.value)
