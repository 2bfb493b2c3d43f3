"""TensorRT plugin `wisparse::SparseLinear`, ahead-of-time (no Python at run time).

The engine embeds the PTX of `sparse_gemv.cu` and its launch parameters, as `wisparse_export.kernels.launch_spec`
computes them for the torch op too. `aot_launch` is the plain body (shapes and dtype in; kernel name, PTX, launch
parameters and int32 arguments out) so it runs and is tested without TensorRT; `register()` only wraps it with the
`tensorrt.plugin` decorators. TensorRT is imported inside `register()` alone.

The ahead-of-time plugin gets one kernel launch and no workspace (tensorrt.plugin.aot_impl returns only the kernel
name, its PTX, KernelLaunchParams and extra int32 SymExprs), which the kernel is built for: one launch writes the
whole output. Kernel parameters follow TensorRT's order: input pointers, the extra int32 arguments, output pointers.
ONNX node and layouts: docs/KERNEL_ABI.md. The exported graphs add a bias after the node (a standard Add), so the
plugin has one fixed signature (X, W, tau) and no bias input. A fused node (q/k/v, gate/up) of P members has op type
SparseLinearP (onnx_graph.op_type) and is the same plugin, registered under that op type too: W [in, sum(splits)],
tau [P, in], output width sum(splits), one launch of `launch_spec` with those splits.

Quantized weights (op version 2's stored form): a second plugin, `wisparse::SparseLinearQ` (X, W_q [in, out] in
float8e4m3fn or int8, tau, W_scale float32 [out]), the same kernel source built with WSP_WQ through the same
`launch_spec`. Its input order is the kernel's pointer order. sparse.onnx's version-2 node is `SparseLinear` (or
SparseLinearP) with empty inputs 1 and 3 (docs/KERNEL_ABI.md); `wisparse build` parses it as a `SparseLinearQ` (or
SparseLinearQP) node in this order (`onnx_graph.tensorrt_view`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

NAMESPACE = "wisparse"
# Tactic id -> rows of x per block. TensorRT times each at build time for the profile's shapes and keeps the best.
TACTIC_ROWS = {1: 1, 2: 2, 3: 4, 4: 8}


def _int_cdiv(a, b):
    return (a + b - 1) // b


def _int(v) -> int:
    return int(v)


def aot_launch(x_shape: Sequence[Any], w_shape: Sequence[Any], tau_shape: Sequence[Any], dtype: str, *,
               splits: Sequence[int] | None = None, tactic: int = 1,
               cdiv: Callable[[Any, int], Any] = _int_cdiv, const: Callable[[Any], int] = _int,
               arch: int = 90, weights: str | None = None,
               scale_shape: Sequence[Any] | None = None) -> tuple[str, str, dict[str, Any], list[Any]]:
    """(kernel name, PTX, launch parameters, int32 arguments) for X [..., in] @ W [in, out] with tau [P, in] or [in].

    Shape entries may be ints or TensorRT shape expressions: `const` reads a build-time constant (W's dims),
    `cdiv` divides a possibly symbolic row count. Every returned value is an int or a symbolic expression.
    `weights` names W's quantized format (fp8_e4m3 or int8; None: X's dtype); then `scale_shape` must be [out].
    """
    from wisparse_export.kernels import launch_spec

    if len(w_shape) != 2:
        raise ValueError(f"W must be [in, out], got rank {len(w_shape)}")
    in_features, out = const(w_shape[0]), const(w_shape[1])
    splits = [int(s) for s in splits] if splits is not None and len(splits) else [out]
    if sum(splits) != out:
        raise ValueError(f"splits {splits} do not add up to W's out dimension {out}")
    if const(x_shape[-1]) != in_features:
        raise ValueError(f"X's last dimension {x_shape[-1]} is not W's in dimension {in_features}")
    taus = [const(d) for d in tau_shape]
    if taus not in ([in_features], [len(splits), in_features]) or (len(taus) == 1 and len(splits) > 1):
        raise ValueError(f"tau must be [{in_features}] or [{len(splits)}, {in_features}], got {taus}")
    if (weights is None) != (scale_shape is None) or (
            scale_shape is not None and [const(d) for d in scale_shape] != [out]):
        raise ValueError(f"W_scale [{out}] comes with quantized weights and only with them, got {scale_shape}")
    lead = list(x_shape[:-1]) or [1]
    n_rows = lead[0]
    for d in lead[1:]:
        n_rows = n_rows * d
    spec = launch_spec(dtype, in_features, splits, n_rows, rows_per_block=TACTIC_ROWS[tactic], cdiv=cdiv, arch=arch,
                       weights=weights)
    params = {"grid_x": spec.grid[0], "grid_y": spec.grid[1], "grid_z": spec.grid[2], "block_x": spec.block[0],
              "block_y": spec.block[1], "block_z": spec.block[2], "shared_mem": spec.shared_mem}
    return spec.name, spec.ptx, params, list(spec.args)


def _kernel(trtp, name: str, ptx: str, params: dict[str, Any], args: list[Any]):
    """What a TensorRT aot_impl returns, from `aot_launch`'s values."""
    launch = trtp.KernelLaunchParams()
    for k, v in params.items():
        setattr(launch, k, v)
    return name.encode(), ptx.encode(), launch, trtp.SymIntExprs.from_tuple([trtp.SymInt32(a) for a in args])


def _const(e) -> int:
    return e if isinstance(e, int) else e.constant_value()


def _define(trtp, ops: Sequence[str], desc: Callable, tune: Callable, aot: Callable) -> None:
    """One plugin (output shape, tactics, ahead-of-time launch) registered under each op type of `ops`."""
    for op in ops:
        trtp.register(f"{NAMESPACE}::{op}")(desc)
        trtp.autotune(f"{NAMESPACE}::{op}")(tune)
        trtp.aot_impl(f"{NAMESPACE}::{op}")(aot)


def register(ops: Sequence[str], q_ops: Sequence[str]) -> None:
    """Register the plugins with TensorRT (10.9 or later) under every op type a graph may hold (SparseLinear and
    its fused SparseLinearP: `ops`; SparseLinearQ and SparseLinearQP: `q_ops`; onnx_graph.op_types). Call once
    before parsing an ONNX file that uses them."""
    import numpy as np
    import numpy.typing as npt
    import tensorrt as trt
    import tensorrt.plugin as trtp

    dtypes = {trt.bfloat16: "bf16", trt.float16: "f16"}

    def check_types(x, w, tau):
        if x.dtype not in dtypes or w.dtype != x.dtype or tau.dtype != trt.float32:
            raise ValueError("SparseLinear takes X and W in float16 or bfloat16 alike, tau in float32")

    def _desc(x: trtp.TensorDesc, w: trtp.TensorDesc, tau: trtp.TensorDesc,
              splits: npt.NDArray[np.int32]) -> trtp.TensorDesc:
        check_types(x, w, tau)
        y = x.like()
        y.shape_expr[x.ndim - 1] = w.shape_expr[1]
        return y

    def _tune(x, w, tau, outputs):
        return [trtp.AutoTuneCombination(f"{t}, {t}, FP32, {t}", "LINEAR", sorted(TACTIC_ROWS))
                for t in ("BF16", "FP16")]

    def _aot(x: trtp.TensorDesc, w: trtp.TensorDesc, tau: trtp.TensorDesc, splits: npt.NDArray[np.int32],
             outputs: tuple[trtp.TensorDesc], tactic: int):
        check_types(x, w, tau)
        return _kernel(trtp, *aot_launch(x.shape_expr, w.shape_expr, tau.shape_expr, dtypes[x.dtype],
                                         splits=list(splits), tactic=tactic, cdiv=trtp.cdiv, const=_const))

    _define(trtp, ops, _desc, _tune, _aot)
    _register_quantized(trt, trtp, np, npt, dtypes, q_ops)


def _register_quantized(trt, trtp, np, npt, dtypes, q_ops: Sequence[str]) -> None:
    """`wisparse::SparseLinearQ` (and its fused op types, `q_ops`): X, W_q (fp8 or int8), tau, W_scale."""
    stored = {trt.fp8: "fp8_e4m3", trt.int8: "int8"}

    def check_types(x, w_q, tau, w_scale):
        if x.dtype not in dtypes or w_q.dtype not in stored or tau.dtype != trt.float32 or (
                w_scale.dtype != trt.float32):
            raise ValueError("SparseLinearQ takes X in float16 or bfloat16, W_q in fp8 or int8, tau and W_scale in "
                             "float32")

    def _desc(x: trtp.TensorDesc, w_q: trtp.TensorDesc, tau: trtp.TensorDesc, w_scale: trtp.TensorDesc,
              splits: npt.NDArray[np.int32]) -> trtp.TensorDesc:
        check_types(x, w_q, tau, w_scale)
        y = x.like()
        y.shape_expr[x.ndim - 1] = w_q.shape_expr[1]
        return y

    def _tune(x, w_q, tau, w_scale, outputs):
        return [trtp.AutoTuneCombination(f"{t}, {q}, FP32, FP32, {t}", "LINEAR", sorted(TACTIC_ROWS))
                for t in ("BF16", "FP16") for q in ("FP8", "INT8")]

    def _aot(x: trtp.TensorDesc, w_q: trtp.TensorDesc, tau: trtp.TensorDesc, w_scale: trtp.TensorDesc,
             splits: npt.NDArray[np.int32], outputs: tuple[trtp.TensorDesc], tactic: int):
        check_types(x, w_q, tau, w_scale)
        return _kernel(trtp, *aot_launch(x.shape_expr, w_q.shape_expr, tau.shape_expr, dtypes[x.dtype],
                                         splits=list(splits), tactic=tactic, cdiv=trtp.cdiv, const=_const,
                                         weights=stored[w_q.dtype], scale_shape=w_scale.shape_expr))

    _define(trtp, q_ops, _desc, _tune, _aot)
