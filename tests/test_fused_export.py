"""Fused SparseLinear nodes in sparse.onnx (issue 15): q/k/v and gate/up as one node each where the runtime fuses
them (tau [P, in], `splits`, op type SparseLinearP with its own function, no overloads, a Split to the members),
float and quantized, against PyTorch in ONNX Runtime; dense.onnx's one MatMul per group on the same weights; what
stays unfused; the single-projection bodies unchanged; `check` on fused weights; the TensorRT boundary (the
plugin's ahead-of-time launch) for the fused node."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _plans import graphs_match_pytorch, make_plan, save_tiny
from onnx import numpy_helper
from wisparse_export.plugins.trt_plugin import aot_launch

from wisparse_export import kernels
from wisparse_export.errors import WisparseError
from wisparse_export.export import export
from wisparse_export.manifest import read_manifest, verify_graphs
from wisparse_export.models import load_model, quantize_weights
from wisparse_export.onnx_graph import (
    DOMAIN,
    OP_TYPE,
    OP_TYPE_Q,
    members_of,
    op_types,
    sparse_linear_function,
    sparse_linear_q_function,
    tensorrt_view,
)
from wisparse_export.quant import FORMATS
from wisparse_export.scores import column_norms, tau

GOLDEN = Path(__file__).parent / "data" / "functions"  # the bodies as written before fused nodes existed
ATTN = [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
MLP = ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """weights (None | fp8_e4m3 | int8) -> (Loaded, plan, export folder), a tiny Llama exported once each."""
    made = {}

    def get(weights: str | None):
        if weights not in made:
            root = tmp_path_factory.mktemp(f"fused-{weights}")
            loaded = load_model(str(save_tiny("llama", root / "model")), "float32", "cpu")
            if weights is not None:
                quantize_weights(loaded.model, FORMATS[weights])
            plan = make_plan(loaded)
            export(loaded, plan, root / "out")
            made[weights] = (loaded, plan, root / "out")
        return made[weights]

    return get


def sparse_nodes(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in proto.graph.node if members_of(n)}


def attr(node: onnx.NodeProto, name: str):
    return onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == name))


@pytest.mark.parametrize("weights", [None, "fp8_e4m3", "int8"])
def test_fused_graph_matches_pytorch_with_four_nodes_a_layer(fused, weights):
    loaded, plan, out = fused(weights)
    graphs_match_pytorch(loaded, plan, out, seed=2)
    proto = onnx.load(str(out / "sparse.onnx"), load_external_data=False)
    nodes = sparse_nodes(proto)
    layers = loaded.model.config.num_hidden_layers
    assert len(nodes) == 4 * layers and read_manifest(out)["counts"]["sparse_linear_nodes"] == 4 * layers
    assert "+".join(ATTN) in nodes and "+".join(MLP) in nodes
    assert {n: nodes[n].op_type for n in ("+".join(ATTN), "+".join(MLP), "model.layers.0.mlp.down_proj")} == {
        "+".join(ATTN): "SparseLinear3", "+".join(MLP): "SparseLinear2", "model.layers.0.mlp.down_proj": OP_TYPE}
    assert {n.op_type for n in nodes.values()} == {OP_TYPE, "SparseLinear2", "SparseLinear3"} <= set(op_types())
    assert {n.domain for n in nodes.values()} == {DOMAIN} and not any(n.overload for n in proto.graph.node)
    assert {(f.domain, f.name, f.overload) for f in proto.functions} == {
        (DOMAIN, OP_TYPE, ""), (DOMAIN, "SparseLinear2", ""), (DOMAIN, "SparseLinear3", "")}


def test_fused_node_holds_the_members_side_by_side(fused):
    """W = the members' [in, out] weights concatenated along out, tau = their tau stacked [P, in], splits = their
    widths, and a Split with those widths hands each member its output."""
    loaded, plan, out = fused(None)
    proto = onnx.load(str(out / "sparse.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    node = sparse_nodes(proto)["+".join(ATTN)]
    lins = [loaded.model.get_submodule(n) for n in ATTN]
    assert attr(node, "splits") == [lin.out_features for lin in lins] == [64, 32, 32]
    want_w = torch.cat([lin.weight.detach().t() for lin in lins], dim=1).numpy()
    assert np.array_equal(inits[node.input[1]], want_w)
    want_tau = torch.stack([tau(plan.layers[n].threshold, column_norms(lin.weight), plan.layers[n].alpha)
                            for n, lin in zip(ATTN, lins, strict=True)]).numpy()
    assert inits[node.input[2]].shape == (3, 64) and np.array_equal(inits[node.input[2]], want_tau)
    split = next(n for n in proto.graph.node if n.op_type == "Split" and n.input[0] == node.output[0])
    assert len(split.output) == 3 and list(inits[split.input[1]]) == [64, 32, 32]
    assert not any(name.startswith(ATTN[0]) and name != f"{ATTN[0]}.bias" for name in inits if "+" not in name)


@pytest.mark.parametrize("weights", [None, "int8"])
def test_single_projection_bodies_are_byte_for_byte_as_before(fused, weights):
    """Files exported before fused nodes still load: the P=1 function of a fused export, and every P=1 body the
    code writes, are the committed ones."""
    _, _, out = fused(weights)
    proto = onnx.load(str(out / "sparse.onnx"), load_external_data=False)
    golden = "sparse_linear_v1" if weights is None else "sparse_linear_v2"
    plain = next(f for f in proto.functions if f.name == OP_TYPE)
    assert plain.SerializeToString() == (GOLDEN / f"{golden}.pb").read_bytes()
    for name, fn in (("sparse_linear_v1", sparse_linear_function()), ("sparse_linear_v2", sparse_linear_function(True)),
                     ("sparse_linear_q", sparse_linear_q_function())):
        assert fn.SerializeToString() == (GOLDEN / f"{name}.pb").read_bytes(), name
    fused3 = next(f for f in proto.functions if f.name == "SparseLinear3")
    assert [n.op_type for n in fused3.node].count("MatMul") == 3 and "Split" in {n.op_type for n in fused3.node}


def test_groups_the_runtime_does_not_fuse_stay_unfused(fused, tmp_path):
    """A group with an unplanned member, a group the plan splits, a group across two inputs: what the runtime
    launches, one node per launch; ONNX Runtime still matches PyTorch."""
    loaded, plan, _ = fused(None)
    layers = {n: lp for n, lp in plan.layers.items() if n != "model.layers.1.self_attn.v_proj"}
    groups = [ATTN[:2], ATTN[2:], ["model.layers.0.mlp.down_proj", MLP[0]], MLP[1:]]
    partial = dataclasses.replace(plan, layers=layers, groups=groups)
    export(loaded, partial, tmp_path / "out")
    nodes = sparse_nodes(onnx.load(str(tmp_path / "out" / "sparse.onnx"), load_external_data=False))
    fused_names = {n for n in nodes if "+" in n}
    assert fused_names == {"+".join(ATTN[:2])}  # layer 1 has no group in the plan: nothing fused there
    assert {ATTN[2], *MLP, "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"} <= set(nodes)
    assert attr(nodes["+".join(ATTN[:2])], "splits") == [64, 32]
    graphs_match_pytorch(loaded, partial, tmp_path / "out", seed=3)
    no_groups = dataclasses.replace(plan, layers=layers, groups=[])  # call-site groups: layer 1's q/k/v unplanned
    export(loaded, no_groups, tmp_path / "out2")
    nodes = sparse_nodes(onnx.load(str(tmp_path / "out2" / "sparse.onnx"), load_external_data=False))
    assert "model.layers.1.self_attn.q_proj" in nodes and "+".join(ATTN) in nodes
    assert "model.layers.1.mlp.gate_proj+model.layers.1.mlp.up_proj" in nodes


def test_unfusable_widths_stay_unfused(fused, tmp_path, monkeypatch):
    """`kernels.fusable` decides, as in the runtime: a group it refuses is one node per member."""
    loaded, plan, _ = fused(None)
    seen = []
    monkeypatch.setattr(kernels, "fusable", lambda members: seen.append(len(members)) and False)
    export(loaded, plan, tmp_path / "out")
    nodes = sparse_nodes(onnx.load(str(tmp_path / "out" / "sparse.onnx"), load_external_data=False))
    assert set(nodes) == set(plan.layers) and sorted(seen) == [2, 2, 2, 2, 3, 3, 3, 3]  # asked once per graph
    dense = onnx.load(str(tmp_path / "out" / "dense.onnx"), load_external_data=False)
    assert {n.name for n in dense.graph.node if n.op_type == "MatMul"} >= set(plan.layers)  # one MatMul each
    assert not any("+" in n.name for n in dense.graph.node)


@pytest.mark.parametrize("weights", [None, "int8"])
def test_dense_graph_reads_the_fused_weights(fused, weights):
    """dense.onnx computes a fused group as a fused dense deployment does: one MatMul on the SparseLinear node's W
    (quantized: DequantizeLinear of its W_q and W_scale), cut by a Split into the members; no member's own weight is
    stored, and dense.onnx reads no weight bytes sparse.onnx does not: each weight is in the file once."""
    _, _, out = fused(weights)
    dense, sparse = (onnx.load(str(out / f"{r}.onnx"), load_external_data=False) for r in ("dense", "sparse"))
    produced = {o: n for n in dense.graph.node for o in n.output}
    for node in sparse_nodes(sparse).values():
        matmul = next(n for n in dense.graph.node if n.op_type == "MatMul" and n.name == node.name)
        if weights is None:
            assert matmul.input[1] == node.input[1]
        else:
            w = produced[matmul.input[1]]  # float32 export: the DequantizeLinear itself, no Cast
            assert w.op_type == "DequantizeLinear" and list(w.input) == list(node.input[4:])
        splits = [list(numpy_helper.to_array(next(t for t in dense.graph.initializer if t.name == n.input[1])))
                  for n in dense.graph.node if n.op_type == "Split" and n.input[0] == matmul.output[0]]
        assert splits == ([attr(node, "splits")] if len(attr(node, "splits")) > 1 else [])
    stored = {r: {t.name: tuple((e.key, e.value) for e in t.external_data) for t in p.graph.initializer
                  if t.data_location == onnx.TensorProto.EXTERNAL} for r, p in (("dense", dense), ("sparse", sparse))}
    assert stored["dense"].items() <= stored["sparse"].items() and "+".join(ATTN) in "".join(stored["dense"])
    names = [t.name for p in (dense, sparse) for t in p.graph.initializer]
    assert not [n for n in names for m in ATTN + MLP if n.startswith(f"{m}.") and n != f"{m}.bias"]


@pytest.mark.parametrize("weights", [None, "fp8_e4m3"])
def test_check_reads_members_in_the_fused_weight_and_refuses_a_tampered_one(fused, tmp_path, weights):
    loaded, _, out = fused(weights)
    assert set(verify_graphs(out, read_manifest(out))) == {"dense", "sparse"}
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    proto = onnx.load(str(copy / "sparse.onnx"), load_external_data=False)
    node = sparse_nodes(proto)["+".join(MLP)]
    w = next(t for t in proto.graph.initializer if t.name == node.input[4 if weights else 1])
    info = {e.key: e.value for e in w.external_data}
    with open(copy / info["location"], "r+b") as f:  # the up_proj columns of every row scrambled
        f.seek(int(info["offset"]))
        raw = bytearray(f.read(int(info["length"])))
        item, width = len(raw) // (w.dims[0] * w.dims[1]), w.dims[1]
        for row in range(w.dims[0]):
            start = (row * width + 128) * item
            raw[start: start + 128 * item] = raw[start: start + 128 * item][::-1]
        f.seek(int(info["offset"]))
        f.write(raw)
    for role in ("dense", "sparse"):  # one weight both graphs read: each refuses it
        with pytest.raises(WisparseError, match="the weights differ .* first model.layers.0.mlp.up_proj"):
            verify_graphs(copy, read_manifest(copy), roles=(role,))
    shutil.copy(out / "weights.onnx.data", copy / "weights.onnx.data")
    dense = onnx.load(str(copy / "dense.onnx"), load_external_data=False)
    matmul = next(n for n in dense.graph.node if n.op_type == "MatMul" and n.name == "+".join(MLP))
    matmul.name = "+".join(MLP[::-1])  # the dense graph's members named in the wrong order
    onnx.save(dense, str(copy / "dense.onnx"))
    with pytest.raises(WisparseError, match="the weights differ"):
        verify_graphs(copy, read_manifest(copy), roles=("dense",))
    split = next(n for n in dense.graph.node if n.op_type == "Split" and n.input[0] == matmul.output[0])
    # cut as q/k/v are: 3 widths for 2 linears
    split.input[1] = next(n.input[1] for n in dense.graph.node if n.op_type == "Split" and len(n.output) == 3)
    onnx.save(dense, str(copy / "dense.onnx"))
    with pytest.raises(WisparseError, match="MatMul node .* fuses 3 linears but names 2"):
        verify_graphs(copy, read_manifest(copy), roles=("dense",))
    node.name = "+".join(MLP[::-1])  # members named in the wrong order: each read from the other's columns
    onnx.save(proto, str(copy / "sparse.onnx"))
    with pytest.raises(WisparseError, match="the weights differ"):
        verify_graphs(copy, read_manifest(copy), roles=("sparse",))
    node.name = MLP[0]  # a fused node that names fewer linears than its splits
    onnx.save(proto, str(copy / "sparse.onnx"))
    with pytest.raises(WisparseError, match="fuses 2 linears but names 1"):
        verify_graphs(copy, read_manifest(copy), roles=("sparse",))
    node.name = "+".join(MLP)
    node.op_type = node.op_type[:-1] + "3"  # an op type for 3 members on a node of 2 splits
    onnx.save(proto, str(copy / "sparse.onnx"))
    with pytest.raises(WisparseError, match=r"SparseLinear3 node .* has 2 splits; re-run wisparse export"):
        verify_graphs(copy, read_manifest(copy), roles=("sparse",))


@pytest.fixture
def fake_ptx(monkeypatch):
    """launch_spec without NVRTC (as in test_trt_plugin.py)."""
    monkeypatch.setattr(kernels.geometry, "compile_ptx",
                        lambda source, defines, arch: f"{source} sm_{arch} {sorted(defines.items())}")


@pytest.mark.parametrize("weights", [None, "int8"])
def test_tensorrt_boundary_takes_the_fused_node(fused, fake_ptx, weights):
    """What TensorRT parses (`tensorrt_view`): each node's W (or W_q), tau [P, in], W_scale and splits give the
    plugin's ahead-of-time launch the kernel's launch_spec for those splits, output width sum(splits)."""
    _, _, out = fused(weights)
    view = tensorrt_view(onnx.load(str(out / "sparse.onnx"), load_external_data=False))
    inits = {t.name: list(t.dims) for t in view.graph.initializer}
    nodes = [n for n in view.graph.node if n.domain == DOMAIN]
    assert len(nodes) == 8
    for n in nodes:
        splits = attr(n, "splits")
        w, t = inits[n.input[1]], inits[n.input[2]]
        assert w[1] == sum(splits) and t == ([w[0]] if len(splits) == 1 else [len(splits), w[0]])
        q = {} if weights is None else {"weights": weights, "scale_shape": inits[n.input[3]]}
        name, ptx, params, args = aot_launch((2, 1, w[0]), w, t, "bf16", splits=splits, tactic=2, **q)
        spec = kernels.launch_spec("bf16", w[0], splits, 2, rows_per_block=2, weights=q.get("weights"))
        assert (name, ptx, list(args)) == (spec.name, spec.ptx, list(spec.args))
        assert args[:3] == [2, w[0], sum(splits)] and args[3:3 + len(splits)] == splits
    if weights is not None:
        assert {n.op_type for n in nodes} == {OP_TYPE_Q, "SparseLinearQ2", "SparseLinearQ3"} <= set(op_types(OP_TYPE_Q))
        assert {(f.name, f.overload) for f in view.functions if f.name.startswith(OP_TYPE_Q)} == {
            (OP_TYPE_Q, ""), ("SparseLinearQ2", ""), ("SparseLinearQ3", "")}
