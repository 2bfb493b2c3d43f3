"""Sparse decode kernels: NVRTC builds on CPU; on a GPU, outputs against a float64 reference on fresh inputs."""

from __future__ import annotations

import os
import re

import pytest
import torch
import torch.nn.functional as F
from _plans import gpu, nvrtc

from wisparse_export import kernels
from wisparse_export.errors import WisparseError
from wisparse_export.runtime import SparseLinear, apply, remove, sparse_linears, to_kernels


@pytest.fixture(autouse=True, scope="module")
def _module_cache(tmp_path_factory):
    """A fresh kernel cache for this module (builds are really exercised), unless the caller chose a cache."""
    mp = pytest.MonkeyPatch()
    if "WISPARSE_KERNEL_CACHE" not in os.environ:
        mp.setenv("WISPARSE_KERNEL_CACHE", str(tmp_path_factory.mktemp("kcache")))
    yield
    mp.undo()


# ------------------------------------------------------------------ CPU: build and launch specs

VARIANTS = [  # (rows per block, tile, vec, cluster, bias, dtype): every template axis is covered at least once
    (1, 16, 8, 1, False, "bf16"), (1, 32, 8, 2, True, "f16"), (2, 64, 8, 4, False, "bf16"),
    (4, 128, 8, 8, True, "bf16"), (8, 16, 8, 1, False, "f16"), (8, 128, 8, 8, True, "f16"),
    (1, 16, 1, 1, False, "bf16"), (8, 32, 1, 4, True, "f16"),
]


@nvrtc
@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("rows,tile,vec,cluster,bias,dtype", VARIANTS)
def test_source_compiles_to_ptx(arch, rows, tile, vec, cluster, bias, dtype):
    if arch < 90:
        cluster = 1  # thread-block clusters are Hopper's
    spec = kernels.launch_spec(dtype, 4096, [4096], rows, bias=bias, rows_per_block=rows, tile=tile, vec=vec,
                               cluster=cluster, arch=arch)
    assert f".target sm_{arch}" in spec.ptx
    assert f".entry {spec.name}(" in spec.ptx
    assert spec.ptx.count(".param .u64") == 4 + bias  # x, w, tau, [bias,] y
    assert spec.ptx.count(".param .u32") == 6  # n_rows, in, ldw, out0, out1, out2
    assert (".explicitcluster" in spec.ptx) == (cluster > 1)


@nvrtc
@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 90])
def test_every_variant_compiles(arch):
    for dtype in ("bf16", "f16"):
        for rows in kernels.ROWS:
            for tile in kernels.TILES:
                for vec in (8, 1):
                    if vec == 1 and tile > 32:
                        continue
                    for bias in (False, True):
                        for cluster in kernels.CLUSTERS if arch >= 90 else (1,):
                            spec = kernels.launch_spec(dtype, 64, [64], rows, bias=bias, rows_per_block=rows,
                                                       tile=tile, vec=vec, cluster=cluster, arch=arch)
                            assert f".entry {spec.name}(" in spec.ptx


@nvrtc
def test_sm90_cubin_has_no_spills():
    """Register arrays stay in registers, within the budget of the blocks per multiprocessor each variant asks for
    (decode rows: 2 blocks with one or two per column tile, 3 with split-K over 4 or 8; 4-8 rows: 1)."""
    for rows in (1, 2, 8):
        for cluster in (1, 8):
            defines = {"WSP_NAME": "k", "WSP_R": rows, "WSP_TN": 128, "WSP_V": 8, "WSP_BIAS": 1, "WSP_C": cluster}
            _, log = kernels.compile_ptx(kernels.SOURCE, defines, 90, cubin=True, extra=["--ptxas-options=-v"])
            assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in log, log
            regs = int(re.search(r"Used (\d+) registers", log).group(1))
            blocks = 1 if rows > 2 else 2 if cluster <= 2 else 3
            assert regs <= min(255, 65536 // (kernels.THREADS * blocks)), log


@nvrtc
def test_tuning_overrides_reach_the_kernel_and_stay_out_of_the_heuristics():
    spec = kernels.launch_spec("bf16", 4096, [14336], 1, tile=256, cluster=2, tune={"WSP_U": 4, "WSP_MINB": 3})
    assert spec.name == "wsp_gemv_bf16_r1_n256_v8_c2_minb3_u4" and spec.grid == (112, 1, 1)
    assert ".maxntid 256, 1, 1" in spec.ptx and ".minnctapersm 3" in spec.ptx
    with pytest.raises(WisparseError, match="tile 256"):
        kernels.launch_spec("bf16", 4096, [14336], 1, tile=256, cluster=2)


@nvrtc
def test_ptx_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("WISPARSE_KERNEL_CACHE", str(tmp_path / "kcache"))
    a = kernels.launch_spec("bf16", 4096, [4096], 1)
    files = list((tmp_path / "kcache").glob("*.ptx"))
    assert len(files) == 1 and files[0].read_text() == a.ptx
    files[0].write_text(a.ptx + "// cached\n")  # a new process reads the file instead of compiling
    kernels.build._ptx_memo.clear()
    assert kernels.launch_spec("bf16", 4096, [4096], 1).ptx.endswith("// cached\n")


Q_FORMATS = ("fp8_e4m3", "int8")
Q_VARIANTS = [  # (rows per block, tile, vec, cluster, bias, dtype) of 1-byte weights: every axis at least once
    (1, 256, 16, 2, False, "bf16"), (2, 128, 16, 4, True, "f16"), (4, 256, 16, 8, True, "bf16"),
    (8, 128, 16, 1, False, "bf16"), (8, 64, 8, 8, True, "f16"), (1, 16, 8, 1, True, "bf16"),
    (4, 32, 1, 4, False, "f16"),
]


@nvrtc
@pytest.mark.parametrize("weights", Q_FORMATS)
@pytest.mark.parametrize("rows,tile,vec,cluster,bias,dtype", Q_VARIANTS)
def test_quantized_source_compiles_to_ptx(weights, rows, tile, vec, cluster, bias, dtype):
    spec = kernels.launch_spec(dtype, 4096, [4096], rows, bias=bias, rows_per_block=rows, tile=tile, vec=vec,
                               cluster=cluster, weights=weights)
    assert f"_{weights}_" in spec.name and f".entry {spec.name}(" in spec.ptx and spec.weights == weights
    assert spec.ptx.count(".param .u64") == 5 + bias  # x, w, tau, scale, [bias,] y
    assert spec.ptx.count(".param .u32") == 6
    assert ("cvt.rn.f16x2.e4m3x2" in spec.ptx) == (weights == "fp8_e4m3")  # converted in registers
    assert (".explicitcluster" in spec.ptx) == (cluster > 1)


@nvrtc
@pytest.mark.slow
def test_every_quantized_variant_compiles():
    for weights in Q_FORMATS:
        for dtype in ("bf16", "f16"):
            for rows in kernels.ROWS:
                for tile in (256, *kernels.TILES):
                    for vec in (16, 8, 1):
                        if tile > 32 and vec == 1 or tile == 256 and (vec != 16 or rows > 4):
                            continue
                        for bias in (False, True):
                            for cluster in kernels.CLUSTERS:
                                spec = kernels.launch_spec(dtype, 64, [64], rows, bias=bias, rows_per_block=rows,
                                                           tile=tile, vec=vec, cluster=cluster, weights=weights)
                                assert f".entry {spec.name}(" in spec.ptx


@nvrtc
@pytest.mark.parametrize("weights", Q_FORMATS)
def test_quantized_cubin_has_no_spills(weights):
    """Twice the accumulators of 16-bit weights (16 per load) still fit the register budget of each variant's
    blocks per multiprocessor (1 row: 2, or 3 with split-K over 4 or 8; 2 rows: 2; 4-8 rows: 1)."""
    for rows in (1, 2, 4, 8):
        for cluster in (1, 8):
            defines = {"WSP_NAME": "k", "WSP_R": rows, "WSP_TN": 256 if rows <= 4 else 128, "WSP_V": 16,
                       "WSP_BIAS": 1, "WSP_C": cluster, "WSP_WQ": 1 + Q_FORMATS.index(weights)}
            _, log = kernels.compile_ptx(kernels.SOURCE, defines, 90, cubin=True, extra=["--ptxas-options=-v"])
            assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in log, log
            regs = int(re.search(r"Used (\d+) registers", log).group(1))
            blocks = 1 if rows > 2 else 2 if rows == 2 or cluster <= 2 else 3
            assert regs <= min(255, 65536 // (kernels.THREADS * blocks)), log


def _weight_load_addresses(ptx: str) -> tuple[int, int]:
    """(16-byte weight loads, those whose address is one add of the pinned chunk base and a row offset)."""
    pins = set(re.findall(r"mov\.b64 (%rd\d+), \1;", ptx))
    defs: dict[str, list[tuple[str, str]]] = {}
    for line in ptx.splitlines():
        m = re.match(r"\s*(\S+)\s+(%rd\d+), (.*);", line)
        if m:
            defs.setdefault(m.group(2), []).append((m.group(1), m.group(3)))
    loads = re.findall(r"ld\.global\.nc\.L1::no_allocate\.v4\.u32 \{[^}]*\}, \[(%rd\d+)\];", ptx)
    based = [len(d) == 1 and d[0][0] == "add.s64" and bool(pins & set(d[0][1].split(", ")))
             for d in (defs.get(r, []) for r in loads)]
    return len(loads), sum(based)


@nvrtc
@pytest.mark.parametrize("weights", [None, *Q_FORMATS])
def test_weight_rows_are_one_add_from_a_held_base(weights):
    """Build v6: every kept row's 16-byte load takes its address as the chunk's base, held in a register, plus the
    row's offset; the compiler no longer rebuilds the base and sign-extends ldw at every load (docs/BENCHMARKS.md,
    probe 11: faster in every cell measured, the same y bit for bit)."""
    for rows in (1, 2, 8):
        for in_f, splits in ((14336, [4096]), (4096, [14336]), (4096, [4096, 1024, 1024])):
            spec = kernels.launch_spec("bf16", in_f, splits, rows, weights=weights, arch=90)
            loads, based = _weight_load_addresses(spec.ptx)
            assert loads >= 8 and based == loads, (spec.name, loads, based)


@pytest.fixture
def fake_ptx(monkeypatch):
    """launch_spec without NVRTC: the PTX stands in as the target and defines it would be compiled with."""
    monkeypatch.setattr(kernels.geometry, "compile_ptx",
                        lambda source, defines, arch: f"{source} sm_{arch} {sorted(defines.items())}")


def test_launch_spec_shapes(fake_ptx):
    s = kernels.launch_spec("bfloat16", 4096, [4096, 1024, 1024], 3, sms=132)
    assert s.rows_per_block == 4 and s.block == (256, 1, 1) and s.shared_mem == 0
    assert s.ptx.startswith("sparse_gemv.cu sm_90 ") and "('WSP_R', 4)" in s.ptx
    assert f"('WSP_NAME', '{s.name}')" in s.ptx
    assert s.grid == (sum(-(-o // s.tile) for o in (4096, 1024, 1024)) * s.cluster, 1, 1)
    assert s.args == (3, 4096, 6144, 4096, 1024, 1024)
    s = kernels.launch_spec(torch.float16, 1000, [999], 13)  # odd width: 2-byte loads, two row blocks of 8
    assert s.vec == 1 and s.tile <= 32 and s.rows_per_block == 8 and s.grid[1] == 2 and "_f16_" in s.name
    wide = kernels.launch_spec("bf16", 4096, [28672], 1, sms=132)
    narrow = kernels.launch_spec("bf16", 14336, [4096], 1, sms=132)
    assert narrow.cluster > wide.cluster and narrow.grid[0] >= 1.45 * 132  # split-K fills the GPU for narrow outputs
    assert 1.45 * 132 <= wide.grid[0] <= 2.6 * 132 and kernels.launch_spec("bf16", 64, [64], 1, arch=80).cluster == 1


@pytest.mark.parametrize("kwargs,msg", [
    (dict(dtype="float32", in_features=64, splits=[64]), "bfloat16 or float16"),
    (dict(dtype="bf16", in_features=64, splits=[8, 8, 8, 8]), "splits"),
    (dict(dtype="bf16", in_features=64, splits=[12], vec=8), "multiples of 8"),
    (dict(dtype="bf16", in_features=2**20, splits=[4096]), "unsupported weight shape"),
    (dict(dtype="bf16", in_features=64, splits=[64], tile=128, vec=1), "tile"),
    (dict(dtype="bf16", in_features=64, splits=[64], tile=16, cluster=2, arch=80), "sm_90"),
])
def test_launch_spec_refuses(kwargs, msg):
    with pytest.raises(WisparseError, match=msg):
        kernels.launch_spec(**kwargs)


def test_quantized_launch_spec(fake_ptx):
    s = kernels.launch_spec("bf16", 4096, [14336], 1, weights=kernels.as_weight_format("int8"))
    assert s.name.startswith("wsp_gemv_bf16_int8_r1_") and "('WSP_WQ', 2)" in s.ptx and s.weights == "int8"
    assert s.vec == 16 and s.args == (1, 4096, 14336, 14336, 0, 0)
    assert "WSP_WQ" not in kernels.launch_spec("bf16", 4096, [14336], 1).ptx  # 16-bit builds keep their defines
    assert kernels.launch_spec("f16", 1000, [520, 264], 2, weights="fp8_e4m3").vec == 8  # 520: 8-byte loads
    assert kernels.launch_spec("bf16", 17, [40], 1, weights="int8").vec == 8
    assert kernels.launch_spec("bf16", 17, [36], 1, weights="int8").vec == 1
    assert kernels.bytes_moved(4096, 14336, 1, 0.5, weights="int8") == (
        2048 * 14336 + 14336 * 4 + 4096 * 2 + 4096 * 4 + 14336 * 2)
    assert kernels.bytes_moved(4096, 14336, 1, 0.5) == 2048 * 14336 * 2 + 4096 * 2 + 4096 * 4 + 14336 * 2


@pytest.mark.parametrize("kwargs,msg", [
    (dict(weights="fp4"), "fp8_e4m3 or int8"),
    (dict(weights=torch.float8_e4m3fn), "fp8_e4m3 or int8"),
    (dict(vec=16), "not one of"),
    (dict(weights="int8", splits=[4104], vec=16), "multiples of 16"),
    (dict(weights="fp8_e4m3", arch=80, cluster=1), "sm_89"),
    (dict(weights="int8", n_rows=8, tile=256), "tile 256"),
    (dict(weights="int8", vec=8, tile=256), "tile 256"),
])
def test_quantized_launch_spec_refuses(fake_ptx, kwargs, msg):
    args = dict(dtype="bf16", in_features=4096, splits=[4096]) | kwargs
    with pytest.raises(WisparseError, match=msg) as e:
        kernels.launch_spec(**args)
    assert "\n" not in str(e.value)


def test_versions_are_compared(monkeypatch):
    monkeypatch.setattr(kernels.driver, "nvrtc_version", lambda: (13, 4))
    monkeypatch.setattr(kernels.driver, "driver_version", lambda: (13, 0))
    with pytest.raises(WisparseError, match=r"NVRTC 13.4 .*\(CUDA 13.0\)"):
        kernels.check_versions()
    monkeypatch.setattr(kernels.driver, "driver_version", lambda: (13, 1))
    monkeypatch.setattr(kernels.driver, "nvrtc_version", lambda: (13, 0))
    kernels.check_versions()


def test_rows_choose_kernel_or_cublas():
    use = kernels.use_kernel
    assert use(1, 0.4) and not use(2, 0.4) and not use(8, 0.4)
    assert use(2, 0.5) and use(4, 0.5) and not use(5, 0.5)
    assert not use(3, 0.3) and not use(4, 0.3)
    assert use(3, 0.4) and not use(4, 0.45) and not use(2, 0.45)  # the KEEP_MAX comment's switch points
    assert use(4, 0.95) and not use(5, 0.95)
    assert use(1, 0.0)  # one row: the kernel's own dense walk


def _ref64(x, wt, tau, bias, splits):
    """float64 reference; the keep test itself is float32, as the contract says."""
    taus = tau.reshape(len(splits), -1).float()
    ys, col = [], 0
    for p, s in enumerate(splits):
        keep = x.float().abs() > taus[p]
        ys.append((x.double() * keep) @ wt[:, col:col + s].double())
        col += s
    y = torch.cat(ys, -1)
    return y + bias.double() if bias is not None else y


def test_cpu_op_is_the_reference():
    torch.manual_seed(0)
    x, wt = torch.randn(3, 40, dtype=torch.bfloat16), torch.randn(40, 24, dtype=torch.bfloat16)
    tau, b = torch.rand(2, 40) * 1.5, torch.randn(24, dtype=torch.bfloat16)
    y = kernels.sparse_linear_op(x, wt, tau, b, [16, 8])
    ref = _ref64(x, wt, tau, b, [16, 8])
    assert y.shape == (3, 24) and torch.allclose(y.double(), ref, rtol=2e-2, atol=2e-2)
    assert not torch.allclose(y.double(), _ref64(x, wt, torch.zeros_like(tau), b, [16, 8]), atol=1e-1)


@pytest.mark.parametrize("fmt", Q_FORMATS)
def test_cpu_quantized_op_is_dequantize_then_masked_matmul(fmt):
    from wisparse_export import quant

    torch.manual_seed(0)
    x, w = torch.randn(3, 40, dtype=torch.bfloat16), torch.randn(24, 40)
    q, scale = quant.quantize(w, quant.FORMATS[fmt])
    tau, b = torch.rand(2, 40) * 1.5, torch.randn(24, dtype=torch.bfloat16)
    y = kernels.sparse_linear_q_op(x, q.t(), scale, tau, b, [16, 8])
    deq = quant.dequantize(q, scale, torch.bfloat16)  # [out, in]
    assert torch.equal(kernels.dequantized(q.t(), scale, torch.bfloat16), deq.t())
    assert torch.equal(y, kernels.sparse_linear_op(x, deq.t(), tau, b, [16, 8]))
    assert torch.allclose(y.double(), _ref64(x, deq.t(), tau, b, [16, 8]), rtol=2e-2, atol=2e-2)
    assert not torch.allclose(y.double(), _ref64(x, deq.t(), torch.zeros_like(tau), b, [16, 8]), atol=1e-1)


def _tiny_llama(dtype=torch.float32, device="cpu"):
    """`_plans.tiny_model("llama")` (weights large enough that every linear's input has a real spread)."""
    from _plans import tiny_model

    return tiny_model("llama").to(device=device, dtype=dtype)


def _uniform_plan(model, threshold=0.5):
    from wisparse_export.models import find_blocks
    from wisparse_export.plan import LayerPlan, Plan

    blocks = find_blocks(model)
    layers = {}
    for b in blocks:
        for n in b.linears:
            lin = model.get_submodule(n)
            layers[n] = LayerPlan(0.5, threshold, 0.0, (lin.out_features, lin.in_features))
    return Plan(model={"fingerprint": "x"}, method="teal", target_sparsity=0.5, calibration={}, layers=layers,
                groups=[g for b in blocks for g in b.groups])


def _apply_uniform(model, threshold=0.5):
    return apply(model, _uniform_plan(model, threshold), check=False, kernels=False)  # tests call to_kernels


@pytest.fixture
def cpu_kernels(monkeypatch):
    """`to_kernels` converts CPU bfloat16 linears (layout, fusion) without compiling or loading any kernel."""
    monkeypatch.setattr(kernels, "supports", lambda w, fmt=None: w.dtype == torch.bfloat16)
    monkeypatch.setattr(kernels, "preload", lambda layers: list(layers))


def _qkv(mods):
    return [n for n in mods if ".0.self_attn." in n and n.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj")]


def test_fused_group_matches_members_on_cpu(cpu_kernels):
    """The fusion bookkeeping (shared views, one launch per input, siblings served from it) on the CPU op."""
    model = _apply_uniform(_tiny_llama(torch.bfloat16))
    mods = sparse_linears(model)
    names = _qkv(mods)
    x = torch.randn(1, 2, 64, dtype=torch.bfloat16)
    want = {n: mods[n](x) for n in names}
    to_kernels(model, [names])
    group = mods[names[0]].fused
    assert [mods[n].fused for n in names] == [group] * 3 and group.members == [mods[n] for n in names]
    for p, n in enumerate(names):
        assert mods[n].weight.data_ptr() == group.wt[:, sum(group.splits[:p]):].data_ptr()
        got = group(p, x)
        assert torch.allclose(got.float(), want[n].float(), atol=1e-2, rtol=1e-2), n
    assert group.x is None  # every sibling served: the cached input is released
    mods[names[0]].set(9.0, 0.0)  # re-thresholding a member reaches the group's stacked tau
    assert torch.all(group.tau[0] == 9.0)


@pytest.mark.parametrize("fmt", [None, "int8"])
def test_fused_group_is_one_launch_under_torch_compile(cpu_kernels, fmt):
    """Under torch.compile (fullgraph) a q/k/v group still launches once for its three members, with the eager
    results, and its cached input is released after: dynamo traces the group's bookkeeping (one op per group in
    the graph, as in eager decoding)."""
    from wisparse_export import quant
    from wisparse_export.models import quantize_weights

    model = _tiny_llama(torch.bfloat16)
    if fmt is not None:
        model = quantize_weights(model, quant.FORMATS[fmt])
    mods = sparse_linears(_apply_uniform(model, threshold=0.3))
    names = _qkv(mods)
    to_kernels(model, [names])
    group = mods[names[0]].fused

    def qkv(x):
        return [kernels.sparse_linear(mods[n], x, mods[n].fused, mods[n].index) for n in names]

    x = torch.randn(1, 1, 64, dtype=torch.bfloat16)
    want = qkv(x)
    ops = []

    def backend(gm, example_inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if "wisparse" in str(n.target))
        return gm

    got = torch.compile(qkv, backend=backend, fullgraph=True)(x)
    assert ops == ["wisparse.sparse_linear_q.default" if fmt else "wisparse.sparse_linear.default"]
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)) and group.x is None


def test_threshold_zero_takes_the_plain_dense_matmul(monkeypatch, cpu_kernels):
    """A layer planned at sparsity 0 runs cuBLAS on x itself (no mask launch, no kernel), alone or as a fused group
    (one matmul over the concatenated weight); re-thresholding switches the path on the next call."""
    model = _apply_uniform(_tiny_llama(torch.bfloat16), threshold=0.0)
    mods = sparse_linears(model)
    calls = []
    for name in ("sparse_linear_op", "mask_op"):
        orig = getattr(kernels.dispatch, name)
        monkeypatch.setattr(kernels.dispatch, name, lambda *a, _n=name, _o=orig: calls.append(_n) or _o(*a))
    down = mods["model.layers.0.mlp.down_proj"]
    x = torch.randn(1, 1, 128, dtype=torch.bfloat16)
    for rows in (1, 8):
        xr = x.expand(1, rows, 128).contiguous()
        assert torch.equal(kernels.sparse_linear(down, xr), F.linear(xr, down.weight)) and calls == []
    down.set(0.3, 0.0, 0.5)
    kernels.sparse_linear(down, x)
    kernels.sparse_linear(down, x.expand(1, 8, 128).contiguous())
    assert calls == ["sparse_linear_op", "mask_op"]  # one row: the kernel; eight rows: mask + cuBLAS

    calls.clear()
    names = _qkv(mods)
    to_kernels(model, [names])
    group = mods[names[0]].fused
    h = torch.randn(1, 1, 64, dtype=torch.bfloat16)
    ys = [kernels.sparse_linear(mods[n], h, mods[n].fused, mods[n].index) for n in names]
    assert calls == [] and group.dense
    assert torch.allclose(torch.cat(ys, -1).float(), (h @ group.wt).float(), atol=1e-2)
    mods[names[1]].set(0.3, 0.0, 0.5)
    assert not group.dense
    kernels.sparse_linear(mods[names[0]], h, group, 0)
    assert calls == ["sparse_linear_op"]


def test_quantized_linears_run_their_stored_form(monkeypatch, cpu_kernels):
    """A quantized model on the kernels: weight_q in the kernel layout (fused groups concatenate weights and scales),
    decode rows on the quantized op, many rows on cuBLAS with the dequantized weight; remove gives back [out, in]."""
    from wisparse_export import quant
    from wisparse_export.models import quantize_weights

    model = quantize_weights(_tiny_llama(torch.bfloat16), quant.FORMATS["int8"])
    stored = {n: (m.weight_q.clone(), m.weight_scale.clone()) for n, m in model.named_modules()
              if getattr(m, "weight_format", None) is not None}
    mods = sparse_linears(_apply_uniform(model, threshold=0.3))
    down_name = "model.layers.0.mlp.down_proj"
    names, down = _qkv(mods), mods[down_name]
    x, h = torch.randn(1, 2, 64, dtype=torch.bfloat16), torch.randn(1, 1, 128, dtype=torch.bfloat16)
    want = {n: mods[n](x) for n in names}
    want_down = down(h)
    to_kernels(model, [names])
    calls = []
    for name in ("sparse_linear_op", "sparse_linear_q_op", "mask_op"):
        orig = getattr(kernels.dispatch, name)
        monkeypatch.setattr(kernels.dispatch, name, lambda *a, _n=name, _o=orig: calls.append(_n) or _o(*a))
    group = mods[names[0]].fused
    assert group.wq.dtype == torch.int8 and group.wq.shape == (64, sum(group.splits)) and group.wq.is_contiguous()
    for p, n in enumerate(names):
        m = mods[n]
        assert m.weight_q.data_ptr() == group.wq[:, sum(group.splits[:p]):].data_ptr()
        assert torch.equal(m.weight_q, stored[n][0]) and torch.equal(m.weight_scale, stored[n][1])
        got = kernels.sparse_linear(m, x, group, p)
        assert torch.allclose(got.float(), want[n].float(), atol=1e-2, rtol=1e-2), n
    assert calls == ["sparse_linear_q_op"]  # one launch for the group
    assert down.weight_q.t().is_contiguous() and torch.equal(down.weight_q, stored[down_name][0])
    calls.clear()
    assert torch.allclose(kernels.sparse_linear(down, h).float(), want_down.float(), atol=1e-2, rtol=1e-2)
    kernels.sparse_linear(down, h.expand(1, 8, 128).contiguous())
    assert calls == ["sparse_linear_q_op", "mask_op"]  # 1 row: the stored form; 8 rows: mask + cuBLAS
    remove(model)
    assert down.weight_q.is_contiguous() and torch.equal(down.weight_q, stored[down_name][0])


# ------------------------------------------------------------------ GPU: correctness against float64

SHAPES = [  # (in, splits): block-size multiples and not, several chunks, fused groups
    (64, [8]), (1000, [999]), (1001, [1000]), (4096, [4096]), (9000, [520, 264]), (576, [576, 192, 192]),
    (14336, [4096]), (2048, [5632]), (17, [40]),
]
SPARSITY = [0.0, 0.25, 0.5, 0.9, 0.99]


def _case(in_f, splits, rows, sparsity, dtype, bias, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(rows, in_f, device="cuda", generator=g).to(dtype)
    wt = (torch.randn(in_f, sum(splits), device="cuda", generator=g) / in_f**0.5).to(dtype)
    q = torch.quantile(x.float().abs().flatten()[:100000], sparsity).item() if sparsity else 0.0
    tau = q * (0.8 + 0.4 * torch.rand(len(splits), in_f, device="cuda", generator=g))
    if sparsity:
        tau[:, ::97] = float("inf")  # never kept
    b = torch.randn(sum(splits), device="cuda", generator=g).to(dtype) if bias else None
    return x, wt, tau, b


def _assert_close(y, ref, dtype, what):
    assert torch.isfinite(y).all(), f"{what}: unwritten (poisoned) or non-finite outputs"
    eps = 2**-8 if dtype == torch.bfloat16 else 2**-10
    err = (y.double() - ref).abs()
    bound = eps * ref.abs() + 1e-3 * ref.abs().max().clamp_min(1e-6)
    assert (err <= bound).all(), f"{what}: max error {err.max().item():.3g}"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 13])
def test_kernel_matches_float64(dtype, rows):
    seed = 0
    for in_f, splits in SHAPES:
        for sparsity in SPARSITY:
            for bias in (False, True):
                seed += 1
                x, wt, tau, b = _case(in_f, splits, rows, sparsity, dtype, bias, seed)
                spec = kernels.launch_spec(dtype, in_f, splits, rows, bias=bias, sms=kernels.sm_count(x.device))
                y = torch.full((rows, sum(splits)), float("nan"), dtype=dtype, device="cuda")
                ptrs = [x.data_ptr(), wt.data_ptr(), tau.data_ptr()] + ([b.data_ptr()] if bias else [])
                kernels.launch(spec, ptrs, y.data_ptr(), torch.cuda.current_stream().cuda_stream)
                torch.cuda.synchronize()
                _assert_close(y, _ref64(x, wt, tau, b, splits), dtype, f"{spec.name} {in_f}->{splits} s={sparsity}")


@pytest.mark.gpu
@gpu
def test_every_tile_and_row_variant_on_gpu():
    torch.manual_seed(1)
    seed = 0
    for in_f in (3000, 40):  # 40: most blocks of an 8-block cluster get no input channels at all
        for rows_per_block in kernels.ROWS:
            for tile in kernels.TILES:
                for vec in (8, 1):
                    for cluster in kernels.CLUSTERS:
                        if vec == 1 and tile > 32:
                            continue
                        seed += 1
                        x, wt, tau, b = _case(in_f, [200, 64], 5, 0.5, torch.bfloat16, True, seed)
                        spec = kernels.launch_spec("bf16", in_f, [200, 64], 5, bias=True, tile=tile, vec=vec,
                                                   rows_per_block=rows_per_block, cluster=cluster)
                        y = torch.full((5, 264), float("nan"), dtype=torch.bfloat16, device="cuda")
                        kernels.launch(spec, [x.data_ptr(), wt.data_ptr(), tau.data_ptr(), b.data_ptr()],
                                       y.data_ptr(), torch.cuda.current_stream().cuda_stream)
                        torch.cuda.synchronize()
                        _assert_close(y, _ref64(x, wt, tau, b, [200, 64]), torch.bfloat16, f"{spec.name} in={in_f}")


@pytest.mark.gpu
@gpu
def test_op_on_slices_graphs_and_compile():
    """The torch op on a column slice (a fused member alone), under CUDA graph capture and torch.compile."""
    x, wt, tau, _ = _case(4096, [1024, 512], 2, 0.5, torch.bfloat16, False, 7)
    member = wt[:, 1024:]
    ref = _ref64(x, member, tau[1:], None, [512])
    _assert_close(kernels.sparse_linear_op(x, member, tau[1], None, [512]), ref, torch.bfloat16, "slice")

    static_x = x.clone()
    kernels.sparse_linear_op(static_x, wt, tau, None, [1024, 512])  # load before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernels.sparse_linear_op(static_x, wt, tau, None, [1024, 512])
    x2, *_ = _case(4096, [1024, 512], 2, 0.5, torch.bfloat16, False, 8)
    static_x.copy_(x2)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    _assert_close(out, _ref64(x2, wt, tau, None, [1024, 512]), torch.bfloat16, "graph replay")

    fn = torch.compile(lambda a: kernels.sparse_linear_op(a, wt, tau, None, [1024, 512]) * 2, fullgraph=True)
    _assert_close(fn(x2), 2 * _ref64(x2, wt, tau, None, [1024, 512]), torch.bfloat16, "torch.compile")


def _q_case(in_f, splits, rows, sparsity, dtype, bias, seed, fmt):
    """`_case` with the weight quantized (quant.quantize): (x, wq [in, out], scale, tau, bias)."""
    from wisparse_export import quant

    x, wt, tau, b = _case(in_f, splits, rows, sparsity, dtype, bias, seed)
    q, scale = quant.quantize(wt.t(), quant.FORMATS[fmt])
    return x, q.t().contiguous(), scale, tau, b


def _q_ref64(x, wq, scale, tau, bias, splits):
    """float64 reference of the quantized kernel: the stored values times their scales, exactly."""
    return _ref64(x, wq.float().double() * scale.double(), tau, bias, splits)


def _launch_q(spec, x, wq, scale, tau, b, n_out):
    y = torch.full((x.shape[0], n_out), float("nan"), dtype=x.dtype, device="cuda")  # poisoned
    ptrs = [x.data_ptr(), wq.data_ptr(), tau.data_ptr(), scale.data_ptr()] + ([b.data_ptr()] if b is not None else [])
    kernels.launch(spec, ptrs, y.data_ptr(), torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    return y


Q_SHAPES = [(64, [16]), (1000, [999]), (1001, [1000]), (4096, [14336]), (14336, [4096]), (9000, [520, 264]),
            (576, [576, 192, 192]), (4096, [4096, 1024, 1024]), (17, [40])]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt", Q_FORMATS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
def test_quantized_kernel_matches_float64(fmt, dtype, rows):
    seed = 0
    for in_f, splits in Q_SHAPES:
        for sparsity in (0.0, 0.5, 0.75, 0.9):
            for bias in (False, True):
                seed += 1
                x, wq, scale, tau, b = _q_case(in_f, splits, rows, sparsity, dtype, bias, seed, fmt)
                spec = kernels.launch_spec(dtype, in_f, splits, rows, bias=bias, sms=kernels.sm_count(x.device),
                                           weights=fmt)
                y = _launch_q(spec, x, wq, scale, tau, b, sum(splits))
                _assert_close(y, _q_ref64(x, wq, scale, tau, b, splits), dtype,
                              f"{spec.name} {in_f}->{splits} s={sparsity}")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt", Q_FORMATS)
def test_every_quantized_tile_and_row_variant_on_gpu(fmt):
    seed = 0
    for in_f in (3000, 40):
        for rows_per_block in kernels.ROWS:
            for tile in (256, *kernels.TILES):
                for vec in (16, 8, 1):
                    if tile > 32 and vec == 1 or tile == 256 and (vec != 16 or rows_per_block > 4):
                        continue
                    for cluster in kernels.CLUSTERS:
                        seed += 1
                        x, wq, scale, tau, b = _q_case(in_f, [208, 64], 5, 0.5, torch.bfloat16, True, seed, fmt)
                        spec = kernels.launch_spec("bf16", in_f, [208, 64], 5, bias=True, tile=tile, vec=vec,
                                                   rows_per_block=rows_per_block, cluster=cluster, weights=fmt)
                        y = _launch_q(spec, x, wq, scale, tau, b, 272)
                        _assert_close(y, _q_ref64(x, wq, scale, tau, b, [208, 64]), torch.bfloat16,
                                      f"{spec.name} in={in_f}")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt", Q_FORMATS)
def test_quantized_op_on_slices_graphs_and_compile(fmt):
    """The quantized op on a fused member's column slice (weights and scales), in a CUDA graph, under compile."""
    x, wq, scale, tau, _ = _q_case(4096, [1024, 512], 2, 0.5, torch.bfloat16, False, 7, fmt)
    ref = _q_ref64(x, wq[:, 1024:], scale[1024:], tau[1:], None, [512])
    got = kernels.sparse_linear_q_op(x, wq[:, 1024:], scale[1024:], tau[1], None, [512])
    _assert_close(got, ref, torch.bfloat16, "slice")
    static_x = x.clone()
    kernels.sparse_linear_q_op(static_x, wq, scale, tau, None, [1024, 512])  # load before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernels.sparse_linear_q_op(static_x, wq, scale, tau, None, [1024, 512])
    x2 = _q_case(4096, [1024, 512], 2, 0.5, torch.bfloat16, False, 8, fmt)[0]
    static_x.copy_(x2)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    _assert_close(out, _q_ref64(x2, wq, scale, tau, None, [1024, 512]), torch.bfloat16, "graph replay")
    fn = torch.compile(lambda a: kernels.sparse_linear_q_op(a, wq, scale, tau, None, [1024, 512]) * 2,
                       fullgraph=True)
    _assert_close(fn(x2), 2 * _q_ref64(x2, wq, scale, tau, None, [1024, 512]), torch.bfloat16, "torch.compile")


def _each_linear_matches(model, ids):
    """Every sparse linear's output against float64 on the input it really got: y = W (x * [|x| > tau]) + b, W the
    (dequantized) weight. Per linear, because the logits of two correct paths that round differently may differ by
    a lot once a threshold cuts: an input a rounding apart lands on the other side of tau in a later layer (on the
    tiny model at threshold 0.3, PyTorch in bfloat16 against PyTorch in float32 differs by up to 30% on the logits)."""
    from wisparse_export.scores import masked

    seen = {}
    hooks = [m.register_forward_hook(lambda mod, a, y, n=n: seen.__setitem__(n, (a[0], y)))
             for n, m in sparse_linears(model).items()]
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    assert seen.keys() == sparse_linears(model).keys()
    for n, (x, y) in seen.items():
        m = sparse_linears(model)[n]
        want = F.linear(masked(x, m.tau).double(), m.weight.double(), None if m.bias is None else m.bias.double())
        assert torch.isfinite(y).all() and (y.double() - want).norm() / want.norm() < 1e-2, (n, ids.shape)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt", Q_FORMATS)
@pytest.mark.parametrize("threshold", [0.3, 0.0])
def test_apply_on_a_quantized_cuda_model(monkeypatch, fmt, threshold):
    """`apply` on a quantized bf16 CUDA model runs the stored 1-byte weights for decode (fused groups included): each
    linear right on its input; at threshold 0 (no cut) the logits equal the PyTorch path on the dequantized weights;
    prefill (many rows) takes cuBLAS."""
    from wisparse_export import quant
    from wisparse_export.models import quantize_weights

    torch_path = _apply_uniform(quantize_weights(_tiny_llama(torch.bfloat16, "cuda"), quant.FORMATS[fmt]), threshold)
    model = quantize_weights(_tiny_llama(torch.bfloat16, "cuda"), quant.FORMATS[fmt])
    apply(model, _uniform_plan(model, threshold=threshold), check=False)
    # kernel layout: [in, out] storage (a fused member's weight_q is a column slice of its group's, stride(1) wider)
    assert all(m.on_kernels and m.weight_q.stride(0) == 1 for m in sparse_linears(model).values())
    assert any(m.fused is not None for m in sparse_linears(model).values())
    calls = []
    orig = kernels.dispatch.sparse_linear_q_op
    monkeypatch.setattr(kernels.dispatch, "sparse_linear_q_op", lambda *a: calls.append(1) or orig(*a))
    g = torch.Generator(device="cuda").manual_seed(0)
    for ids in (torch.randint(0, 64, (1, 1), device="cuda", generator=g),
                torch.randint(0, 64, (2, 9), device="cuda", generator=g)):
        calls.clear()
        _each_linear_matches(model, ids)
        assert bool(calls) == (ids.numel() == 1), ids.shape
        if threshold == 0:
            with torch.no_grad():
                want = torch_path(input_ids=ids).logits.double()
                got = model(input_ids=ids).logits.double()
            assert (got - want).norm() / want.norm() < 2e-2, ids.shape


@nvrtc
def test_mask_kernel_compiles():
    for arch in (80, 90):
        for dt in ("bf16", "f16"):
            spec = kernels.mask_spec(dt, 100, 3, arch=arch)
            assert f".entry {spec.name}(" in spec.ptx and spec.args == (3, 100)


def test_cpu_mask_op_masks():
    x = torch.tensor([[0.5, -2.0, 0.1, -0.0]], dtype=torch.bfloat16)
    tau = torch.tensor([0.5, 1.0, 0.05, 0.0])
    assert kernels.mask_op(x, tau).tolist() == [[0.0, -2.0, x[0, 2].item(), 0.0]]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mask_kernel_matches_reference_and_replays(dtype):
    """Exact (it only selects), on sizes that fill no block evenly, and inside a CUDA graph."""
    torch.manual_seed(3)
    for rows, k in ((1, 7), (5, 4099), (8, 14336), (33, 576)):
        x = torch.randn(rows, k, device="cuda").to(dtype)
        tau = torch.rand(k, device="cuda")
        ref = torch.where(x.abs().float() > tau, x, torch.zeros((), dtype=dtype, device="cuda"))
        assert torch.equal(kernels.mask_op(x, tau), ref), (rows, k)
    static = x.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernels.mask_op(static, tau)
    x2 = torch.randn_like(x)
    static.copy_(x2)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, torch.where(x2.abs().float() > tau, x2, torch.zeros((), dtype=dtype, device="cuda")))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fuse", [True, False])
def test_prepared_model_matches_torch_backend(fuse):
    model = _tiny_llama(torch.bfloat16, "cuda")
    plan = _uniform_plan(model, threshold=0.3)
    apply(model, plan, check=False, kernels=False)
    ids = torch.randint(0, 64, (1, 1), device="cuda")
    with torch.no_grad():
        want = model(input_ids=ids).logits.double()
        to_kernels(model, plan.groups if fuse else [])
        assert all(m.on_kernels for m in sparse_linears(model).values())
        assert any(m.fused is not None for m in sparse_linears(model).values()) == fuse
        got = model(input_ids=ids).logits.double()
        prefill = model(input_ids=torch.randint(0, 64, (2, 9), device="cuda")).logits  # > 8 rows: cuBLAS path
    assert torch.isfinite(prefill).all()
    assert (got - want).norm() / want.norm() < 2e-2


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fmt", [None, "fp8_e4m3"])
def test_compiled_cuda_model_launches_one_kernel_per_group(fmt):
    """The whole decode step under torch.compile (fullgraph) on CUDA: one kernel op per fused group and per other
    linear (4 a layer: q/k/v, o, gate+up, down), the same logits as the eager step, and every group released."""
    from wisparse_export import quant
    from wisparse_export.models import find_blocks, quantize_weights

    model = _tiny_llama(torch.bfloat16, "cuda")
    if fmt is not None:
        model = quantize_weights(model, quant.FORMATS[fmt])
    plan = _uniform_plan(model, threshold=0.3)
    apply(model, plan, check=False, kernels=False)
    to_kernels(model, plan.groups)
    ids = torch.randint(0, 64, (1, 1), device="cuda")
    ops = []

    def backend(gm, example_inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if "wisparse" in str(n.target))
        return gm

    with torch.no_grad():
        want = model(input_ids=ids).logits
        got = torch.compile(lambda i: model(input_ids=i).logits, backend=backend, fullgraph=True)(ids)
    assert len(ops) == 4 * len(find_blocks(model)), ops
    assert torch.equal(got, want)
    assert all(m.fused is None or m.fused.x is None for m in sparse_linears(model).values())


@pytest.mark.gpu
@gpu
def test_threshold_zero_on_gpu_is_the_dense_model():
    """Planned at sparsity 0, the prepared model (fused groups, graph-free decode and prefill) is the dense model."""
    dense = _tiny_llama(torch.bfloat16, "cuda")
    model = _apply_uniform(_tiny_llama(torch.bfloat16, "cuda"), threshold=0.0)
    to_kernels(model)  # groups found by models.find_blocks
    assert any(m.fused is not None for m in sparse_linears(model).values())
    for ids in (torch.randint(0, 64, (1, 1), device="cuda"), torch.randint(0, 64, (2, 9), device="cuda")):
        with torch.no_grad():
            want, got = dense(input_ids=ids).logits.double(), model(input_ids=ids).logits.double()
        assert (got - want).norm() / want.norm() < 1e-2


@pytest.mark.gpu
@gpu
def test_sparse_linear_module_dispatches_to_kernel(monkeypatch):
    model = _apply_uniform(_tiny_llama(torch.bfloat16, "cuda"))
    to_kernels(model, [])
    lin = model.model.layers[0].mlp.down_proj
    assert type(lin) is SparseLinear and lin.weight.t().is_contiguous()
    calls = []
    orig = kernels.dispatch.sparse_linear_op
    monkeypatch.setattr(kernels.dispatch, "sparse_linear_op", lambda *a: calls.append(1) or orig(*a))
    lin(torch.randn(1, 128, dtype=torch.bfloat16, device="cuda"))
    assert calls == [1]


# ------------------------------------------------------------------ the e2e decoder (bench)


def test_bench_decoder_matches_model_forward():
    """The graph-friendly decode loop computes what the model's own forward computes, token by token."""
    from wisparse_export.bench import Decoder

    model = _tiny_llama()
    ids = torch.tensor([[3, 17, 5, 42, 8]])
    with torch.no_grad():
        want = model(input_ids=ids).logits[0]
    dec = Decoder(model, batch=1, max_len=8)
    dec.reset()
    for i in range(ids.shape[1]):
        dec.ids.copy_(ids[:, i:i + 1])
        got = dec.logits()[0, -1]
        dec.pos.add_(1)
        assert torch.allclose(got, want[i], atol=1e-4, rtol=1e-4), i


def test_bench_run_on_cpu_reports_dense_and_sparse():
    from wisparse_export.bench import run

    res = run(_tiny_llama(), [0.0, 0.5], steps=4, graphs=False, label="tiny")
    assert res["dense_tokens_per_s"] > 0 and [r["target"] for r in res["sparse"]] == [0.0, 0.5]
    assert res["sparse"][0]["realized"] < 0.05 and 0.3 < res["sparse"][1]["realized"] < 0.7


@pytest.mark.gpu
@gpu
def test_apply_on_a_cuda_model_uses_the_kernels():
    """`wisparse_export.apply` alone switches a bf16 CUDA model to the kernels: each linear right on its input, and
    with threshold 0 the logits of the PyTorch path."""
    model = _tiny_llama(torch.bfloat16, "cuda")
    apply(model, _uniform_plan(model, threshold=0.3), check=False)
    assert all(m.on_kernels for m in sparse_linears(model).values())
    assert any(m.fused is not None for m in sparse_linears(model).values())
    ids = torch.randint(0, 64, (1, 1), device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    _each_linear_matches(model, ids)
    torch_path = _apply_uniform(_tiny_llama(torch.bfloat16, "cuda"), threshold=0.0)
    apply(model, _uniform_plan(model, threshold=0.0), check=False)
    with torch.no_grad():
        want = torch_path(input_ids=ids).logits.double()
        got = model(input_ids=ids).logits.double()
    assert (got - want).norm() / want.norm() < 2e-2


@pytest.mark.gpu
@gpu
def test_kernel_layout_saves_and_removes_as_the_dense_model(tmp_path):
    """On the GPU kernels: state_dict() holds the dense model's contiguous, unshared [out, in] tensors (so
    save_pretrained reloads them), and remove gives back the dense model's weights and bit-identical logits."""
    from transformers import AutoModelForCausalLM

    model = _tiny_llama(torch.bfloat16, "cuda")
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 64, (1, 5), device="cuda")
    with torch.no_grad():
        want = model(input_ids=ids).logits
    apply(model, _uniform_plan(model, threshold=0.3), check=False)
    assert any(m.fused is not None for m in sparse_linears(model).values())
    sd = model.state_dict()
    assert list(sd) == list(dense)
    for k, v in sd.items():
        assert torch.equal(v, dense[k]) and v.is_contiguous() and v.untyped_storage().nbytes() == v.nbytes, k
    model.save_pretrained(tmp_path)
    back, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True, dtype=torch.bfloat16)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert all(torch.equal(v.cuda(), dense[k]) for k, v in back.state_dict().items())
    remove(model)
    assert all(p.is_contiguous() for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, want)
