"""The TensorRT plugin's ahead-of-time body: plain-function checks on CPU, a real driver-API launch on a GPU."""

from __future__ import annotations

import ctypes
import importlib.util
import re

import pytest
import torch
from _plans import HAS_NVRTC, nvrtc
from wisparse_export.plugins.trt_plugin import TACTIC_ROWS, aot_launch

from wisparse_export import kernels
from wisparse_export.onnx_graph import OP_TYPE, OP_TYPE_Q, op_types

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
NO_TRT = "TensorRT is not installed (its libraries cannot be installed on the machines this project has)"
QKV = dict(x_shape=(3, 1, 4096), w_shape=(4096, 6144), tau_shape=(3, 4096), dtype="bf16", splits=[4096, 1024, 1024])


@pytest.fixture
def fake_ptx(monkeypatch):
    """launch_spec without NVRTC: the PTX stands in as the target and defines it would be compiled with."""
    monkeypatch.setattr(kernels.geometry, "compile_ptx",
                        lambda source, defines, arch: f"{source} sm_{arch} {sorted(defines.items())}")


class Sym:
    """A stand-in for TensorRT's symbolic shape expressions: records arithmetic instead of computing it."""

    def __init__(self, text: str):
        self.text = text

    def __mul__(self, other):
        return Sym(f"({self.text}*{other.text if isinstance(other, Sym) else other})")

    __rmul__ = __mul__


def sym_cdiv(a, b):
    return Sym(f"cdiv({a.text},{b})")


def _tiling(name: str) -> tuple[int, int, int, int]:
    """(rows per block, tile, elements per load, cluster) from a kernel name (docs/KERNEL_ABI.md)."""
    m = re.fullmatch(r"wsp_gemv_(?:bf16|f16)_r(\d+)_n(\d+)_v(\d+)_c(\d+)", name)
    assert m, name
    return tuple(int(g) for g in m.groups())


@pytest.mark.parametrize("weights,wq", [("fp8_e4m3", 1), ("int8", 2)])
def test_aot_launch_of_quantized_weights(fake_ptx, weights, wq):
    """SparseLinearQ: the same launch_spec with the weight format; W_scale must be [out], and only with W_q."""
    name, ptx, p, args = aot_launch(**QKV, tactic=1, weights=weights, scale_shape=(6144,))
    assert name.startswith(f"wsp_gemv_bf16_{weights}_r1_") and f"('WSP_WQ', {wq})" in ptx
    assert args == [3, 4096, 6144, 4096, 1024, 1024] and p["grid_y"] == 3
    spec = kernels.launch_spec("bf16", 4096, QKV["splits"], 3, rows_per_block=1, weights=weights)
    assert (spec.name, spec.ptx, list(spec.args)) == (name, ptx, args)
    for bad in (dict(weights=weights), dict(scale_shape=(6144,)), dict(weights=weights, scale_shape=(4096,))):
        with pytest.raises(ValueError, match="W_scale"):
            aot_launch(**QKV, **bad)


def test_aot_launch_follows_the_abi(fake_ptx):
    """Grid, block and int32 arguments as docs/KERNEL_ABI.md defines them, for the tiling the kernel's name says."""
    name, ptx, p, args = aot_launch(**QKV, tactic=3)
    rows, tile, vec, cluster = _tiling(name)
    assert rows == TACTIC_ROWS[3] == 4 and vec == 8 and cluster > 1  # Hopper: split-K over a cluster
    assert (p["grid_x"], p["grid_y"], p["grid_z"]) == (cluster * sum(-(-o // tile) for o in QKV["splits"]), 1, 1)
    assert (p["block_x"], p["block_y"], p["block_z"], p["shared_mem"]) == (256, 1, 1, 0)
    assert args == [3, 4096, 6144, 4096, 1024, 1024]  # n_rows, in, ldw, out0..2
    assert ptx.startswith("sparse_gemv.cu sm_90 ") and f"('WSP_NAME', '{name}')" in ptx and "('WSP_BIAS', 0)" in ptx


@nvrtc
def test_aot_ptx_is_the_named_entry_in_tensorrt_parameter_order():
    """The PTX handed to TensorRT defines the named kernel with TensorRT's parameter order (input pointers x, w, tau;
    the six int32 arguments; the output pointer) and the cluster shape compiled in."""
    name, ptx, _, _ = aot_launch(**QKV, tactic=3)
    cluster = _tiling(name)[3]
    assert ".target sm_90" in ptx and ".explicitcluster" in ptx and f".reqnctapercluster {cluster}, 1, 1" in ptx
    entry = ptx[ptx.index(f".entry {name}("):]
    params = re.findall(r"\.param \.(u64|u32) " + name + r"_param_(\d+)", entry[:entry.index(")")])
    assert [t for t, _ in params] == ["u64"] * 3 + ["u32"] * 6 + ["u64"]
    assert [int(i) for _, i in params] == list(range(10))


def test_aot_launch_keeps_batch_symbolic(fake_ptx):
    batch, seq = Sym("B"), Sym("S")
    name, ptx, p, args = aot_launch((batch, seq, 4096), (4096, 14336), (4096,), "f16", tactic=4, cdiv=sym_cdiv)
    assert name == "wsp_gemv_f16_r8_n128_v8_c2" and "('WSP_F16', 1)" in ptx
    assert p["grid_y"].text == "cdiv((B*S),8)" and p["grid_x"] == 14336 // 128 * 2
    assert args[0].text == "(B*S)" and args[1:] == [4096, 14336, 14336, 0, 0]


@pytest.mark.parametrize("shapes,msg", [
    (((1, 4096), (4096, 4096, 1), (4096,)), "W must be"),
    (((1, 4000), (4096, 4096), (4096,)), "last dimension"),
    (((1, 4096), (4096, 4096), (2, 4096)), "tau must be"),
])
def test_aot_launch_checks_shapes(shapes, msg):
    with pytest.raises(ValueError, match=msg):
        aot_launch(*shapes, "bf16")
    with pytest.raises(ValueError, match="add up"):
        aot_launch((1, 64), (64, 64), (2, 64), "bf16", splits=[32, 16])


def test_every_tactic_is_a_rows_variant(fake_ptx):
    names = {aot_launch((2, 64), (64, 64), (64,), "bf16", tactic=t)[0] for t in TACTIC_ROWS}
    assert names == {f"wsp_gemv_bf16_r{r}_n16_v8_c1" for r in (1, 2, 4, 8)}


@pytest.mark.skipif(not HAS_TRT, reason=NO_TRT)
def test_plugin_registers_with_tensorrt():
    import tensorrt as trt
    from wisparse_export.plugins.trt_plugin import register

    register(op_types(OP_TYPE), op_types(OP_TYPE_Q))
    names = {c.name for c in trt.get_plugin_registry().all_creators}
    assert {"SparseLinear", "SparseLinear2", "SparseLinear3", "SparseLinearQ3"} <= names
    assert "SparseLinearBias" not in names


def _driver_launch(name: str, ptx: str, p: dict, pointers: list[int], args: list[int], out: int) -> None:
    """Load PTX and launch it with cuModuleLoadData / cuLaunchKernel only, as a TensorRT runtime would."""
    from cuda.bindings import driver as cu

    def ok(res):
        err, *rest = res if isinstance(res, tuple) else (res,)
        assert err == cu.CUresult.CUDA_SUCCESS, err
        return rest[0] if rest else None

    torch.cuda.init()
    torch.zeros(1, device="cuda")  # torch creates and binds the primary context
    mod = ok(cu.cuModuleLoadData(ptx.encode() + b"\0"))
    fn = ok(cu.cuModuleGetFunction(mod, name.encode()))
    vals = [ctypes.c_void_p(v) for v in pointers] + [ctypes.c_int32(a) for a in args] + [ctypes.c_void_p(out)]
    arr = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
    ok(cu.cuLaunchKernel(fn, p["grid_x"], p["grid_y"], p["grid_z"], p["block_x"], p["block_y"], p["block_z"],
                         p["shared_mem"], cu.CUstream(torch.cuda.current_stream().cuda_stream),
                         ctypes.addressof(arr), 0))
    ok(cu.cuStreamSynchronize(cu.CUstream(torch.cuda.current_stream().cuda_stream)))
    ok(cu.cuModuleUnload(mod))


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_NVRTC), reason="needs a CUDA GPU and cuda-python")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tactic", sorted(TACTIC_ROWS))
@pytest.mark.parametrize("x_shape,in_f,splits", [
    ((1, 1, 4096), 4096, [4096, 1024, 1024]),
    ((2, 3, 2000), 2000, [1000]),
    ((5, 1, 14336), 14336, [4096]),
])
def test_aot_ptx_launched_by_driver_matches_float64(dtype, tactic, x_shape, in_f, splits):
    g = torch.Generator(device="cuda").manual_seed(tactic)
    out = sum(splits)
    x = torch.randn(x_shape, device="cuda", generator=g).to(dtype)
    wt = (torch.randn(in_f, out, device="cuda", generator=g) / in_f**0.5).to(dtype)
    q = torch.quantile(x.float().abs().flatten(), 0.5).item()
    tau = (q * (0.8 + 0.4 * torch.rand(len(splits), in_f, device="cuda", generator=g))).squeeze(0).contiguous()
    name, ptx, p, args = aot_launch(x.shape, wt.shape, tau.shape, "bf16" if dtype == torch.bfloat16 else "f16",
                                    splits=splits, tactic=tactic)
    y = torch.full(x_shape[:-1] + (out,), float("nan"), dtype=dtype, device="cuda")
    _driver_launch(name, ptx, p, [x.data_ptr(), wt.data_ptr(), tau.data_ptr()], args, y.data_ptr())

    taus = tau.reshape(len(splits), in_f)
    ref, col = [], 0
    for i, s in enumerate(splits):
        ref.append((x.double() * (x.float().abs() > taus[i])) @ wt[:, col:col + s].double())
        col += s
    ref = torch.cat(ref, -1)
    assert torch.isfinite(y).all()
    eps = 2**-8 if dtype == torch.bfloat16 else 2**-10
    assert ((y.double() - ref).abs() <= eps * ref.abs() + 1e-3 * ref.abs().max()).all()


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_NVRTC), reason="needs a CUDA GPU and cuda-python")
@pytest.mark.parametrize("weights", ["fp8_e4m3", "int8"])
@pytest.mark.parametrize("tactic", sorted(TACTIC_ROWS))
@pytest.mark.parametrize("x_shape,in_f,splits", [((1, 1, 4096), 4096, [4096, 1024, 1024]),
                                                 ((5, 1, 14336), 14336, [4096])])
def test_aot_ptx_of_quantized_weights_launched_by_driver_matches_float64(weights, tactic, x_shape, in_f, splits):
    """SparseLinearQ's ahead-of-time kernel in TensorRT's parameter order (X, W_q, tau, W_scale, ints, Y), launched
    through the driver API as the engine would: y = scale * sum of x * W_q over kept channels, against float64."""
    from wisparse_export import quant

    g = torch.Generator(device="cuda").manual_seed(tactic)
    out = sum(splits)
    x = torch.randn(x_shape, device="cuda", generator=g).to(torch.bfloat16)
    q, scale = quant.quantize(torch.randn(out, in_f, device="cuda", generator=g) / in_f**0.5, quant.FORMATS[weights])
    wq = q.t().contiguous()  # [in, out], the node's and the kernel's layout
    thr = torch.quantile(x.float().abs().flatten(), 0.5).item()
    tau = (thr * (0.8 + 0.4 * torch.rand(len(splits), in_f, device="cuda", generator=g))).squeeze(0).contiguous()
    name, ptx, p, args = aot_launch(x.shape, wq.shape, tau.shape, "bf16", splits=splits, tactic=tactic,
                                    weights=weights, scale_shape=scale.shape)
    y = torch.full(x_shape[:-1] + (out,), float("nan"), dtype=torch.bfloat16, device="cuda")
    _driver_launch(name, ptx, p, [x.data_ptr(), wq.data_ptr(), tau.data_ptr(), scale.data_ptr()], args, y.data_ptr())
    w64 = wq.double() * scale.double()
    taus, ref, col = tau.reshape(len(splits), in_f), [], 0
    for i, s in enumerate(splits):
        ref.append((x.double() * (x.float().abs() > taus[i])) @ w64[:, col:col + s])
        col += s
    ref = torch.cat(ref, -1)
    assert torch.isfinite(y).all()
    assert ((y.double() - ref).abs() <= 2**-8 * ref.abs() + 1e-3 * ref.abs().max()).all()
