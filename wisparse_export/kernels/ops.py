"""The torch custom ops `wisparse::sparse_linear`, `wisparse::sparse_linear_q` and `wisparse::mask`: plain PyTorch
on CPU, our kernels on CUDA.

Registered through torch.library, so they work under CUDA graphs and torch.compile. The quantized op is a second op
rather than optional inputs of the first: its weight has another dtype and its scale is required, so neither op's
schema admits a 1-byte weight without its scale, and the 16-bit op's schema (and compiled graphs) stay as they were.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..quant import dequantize
from ..scores import keep, masked
from .driver import device_arch, launch, sm_count
from .geometry import LaunchSpec, launch_spec, mask_spec

STORAGE = {torch.float8_e4m3fn: "fp8_e4m3", torch.int8: "int8"}  # a quantized weight's dtype -> its format


def reference(x: torch.Tensor, wt: torch.Tensor, tau: torch.Tensor, bias: torch.Tensor | None,
              splits: Sequence[int]) -> torch.Tensor:
    """The op's meaning in plain PyTorch (W as [in, out]); CPU runs this."""
    taus = tau.reshape(len(splits), -1)
    ys, col = [], 0
    for p, s in enumerate(splits):
        ys.append(masked(x, taus[p]) @ wt[:, col:col + s])
        col += s
    y = torch.cat(ys, dim=-1) if len(ys) > 1 else ys[0]
    return y + bias if bias is not None else y


def rms_norm(x: torch.Tensor, gamma: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm with its roundings (statistics in float32, rounded to x's dtype, then times gamma): what the
    producer kernel (WSP_PRODUCER=1) computes."""
    n = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return gamma * n


def silu_mul(h: torch.Tensor) -> torch.Tensor:
    """The Llama MLP's act_fn(gate) * up from a fused gate/up output h = [gate | up], with its two roundings."""
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


def compact(v: torch.Tensor, tau: torch.Tensor, rows_per_block: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The producer's list for v [n_rows, in] and tau [P, in]: per projection p the channels kept in any row, in
    channel order (idx int32 [P, in]), their masked values (vals [P, in, rows_per_block], rows past n_rows 0) and
    count int32 [P]. Entries past count[p] are unspecified; here they are 0."""
    taus = tau.reshape(-1, v.shape[-1])
    p_n, k = taus.shape
    idx = torch.zeros(p_n, k, dtype=torch.int32, device=v.device)
    vals = v.new_zeros(p_n, k, rows_per_block)
    count = torch.zeros(p_n, dtype=torch.int32, device=v.device)
    for p in range(p_n):
        m = masked(v, taus[p])
        kept = keep(v, taus[p]).any(0).nonzero().flatten()
        idx[p, :len(kept)], count[p] = kept.to(torch.int32), len(kept)
        vals[p, :len(kept), :v.shape[0]] = m[:, kept].t()
    return idx, vals, count


def list_reference(idx: torch.Tensor, vals: torch.Tensor, count: torch.Tensor, wt: torch.Tensor,
                   bias: torch.Tensor | None, splits: Sequence[int], n_rows: int) -> torch.Tensor:
    """What the list GEMV (WSP_LIST) computes: y[:, cols_p] = vals[p, :count[p]]^T W[idx[p, :count[p]], cols_p]
    (+ bias), the first n_rows rows, in fp32 (or vals' wider dtype) rounded once to vals' dtype."""
    acc = torch.promote_types(vals.dtype, torch.float32)
    ys, col = [], 0
    for p, s in enumerate(splits):
        n = int(count[p])
        rows = idx[p, :n].long()
        ys.append(vals[p, :n, :n_rows].t().to(acc) @ wt[rows, col:col + s].to(acc))
        col += s
    y = torch.cat(ys, dim=-1)
    return (y + bias.to(acc) if bias is not None else y).to(vals.dtype)


@torch.library.custom_op("wisparse::sparse_linear", mutates_args=())
def sparse_linear_op(x: torch.Tensor, wt: torch.Tensor, tau: torch.Tensor, bias: torch.Tensor | None,
                     splits: list[int]) -> torch.Tensor:
    """y = x_masked @ wt (+ bias); wt is [in, out] with unit column stride; tau [P, in] float32."""
    return reference(x, wt, tau, bias, splits)


_specs: dict[tuple, LaunchSpec] = {}  # the ops' hot path: shapes -> spec, without re-reading any file


def _vec(wt: torch.Tensor, splits: Sequence[int], vecs: Sequence[int]) -> int:
    """The widest load (elements) the weight's base address, row stride and split widths allow."""
    return next(v for v in vecs if wt.data_ptr() % (v * wt.element_size()) == 0 and wt.stride(0) % v == 0
                and all(s % v == 0 for s in splits))


def _launch_cuda(x, wt, tau, bias, splits, scale=None):
    """One kernel launch for y = masked(x) @ wt (* scale per column) (+ bias); `scale` given: wt is quantized."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k).contiguous()
    n = x2.shape[0]
    out = sum(splits)
    y = torch.empty(x.shape[:-1] + (out,), dtype=x.dtype, device=x.device)
    if n == 0:
        return y
    fmt = STORAGE.get(wt.dtype) if scale is not None else None
    dtype_ok = wt.dtype == x.dtype if scale is None else fmt is not None
    if wt.stride(1) != 1 or tuple(wt.shape) != (k, out) or not dtype_ok:
        raise ValueError(f"weight must be [in={k}, out={out}] of {x.dtype if scale is None else list(STORAGE)} "
                         f"with unit column stride, got {list(wt.shape)} {wt.dtype}")
    if scale is not None and (scale.dtype != torch.float32 or scale.shape != (out,) or scale.stride(0) != 1):
        raise ValueError(f"scale must be float32 [{out}] with unit stride, got {list(scale.shape)} {scale.dtype}")
    tau = tau.contiguous()
    vec = _vec(wt, splits, (16, 8, 1) if fmt else (8, 1))
    key = (x.dtype, fmt, k, tuple(splits), n, bias is not None, wt.stride(0), vec, x.device)
    spec = _specs.get(key)
    if spec is None:
        spec = _specs[key] = launch_spec(x.dtype, k, splits, n, bias=bias is not None, ldw=wt.stride(0), vec=vec,
                                         sms=sm_count(x.device), arch=device_arch(x.device), weights=fmt)
    ptrs = [x2.data_ptr(), wt.data_ptr(), tau.data_ptr()] + ([scale.data_ptr()] if scale is not None else [])
    ptrs += [bias.contiguous().data_ptr()] if bias is not None else []
    launch(spec, ptrs, y.data_ptr(), torch.cuda.current_stream(x.device).cuda_stream, x.device.index or 0)
    return y


@sparse_linear_op.register_kernel("cuda")
def _sparse_linear_cuda(x, wt, tau, bias, splits):
    return _launch_cuda(x, wt, tau, bias, splits)


@sparse_linear_op.register_fake
def _sparse_linear_fake(x, wt, tau, bias, splits):
    return x.new_empty(x.shape[:-1] + (sum(splits),))


def dequantized(wq: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A quantized weight in the kernel layout ([in, out], one scale per column) as its dequantized values in
    `dtype`, [in, out]: quant.dequantize on the [out, in] view, so every path computes the same weight."""
    return dequantize(wq.t(), scale, dtype).t()


@torch.library.custom_op("wisparse::sparse_linear_q", mutates_args=())
def sparse_linear_q_op(x: torch.Tensor, wq: torch.Tensor, scale: torch.Tensor, tau: torch.Tensor,
                       bias: torch.Tensor | None, splits: list[int]) -> torch.Tensor:
    """y = x_masked @ (wq * scale) (+ bias); wq [in, out] float8_e4m3fn or int8 with unit column stride, scale
    float32 [out] (one per column), tau [P, in] float32. CPU: the dequantized weight (quant.dequantize) in x's dtype,
    then `reference`; the CUDA kernel converts the stored bytes in registers and scales each output once in fp32."""
    return reference(x, dequantized(wq, scale, x.dtype), tau, bias, splits)


@sparse_linear_q_op.register_kernel("cuda")
def _sparse_linear_q_cuda(x, wq, scale, tau, bias, splits):
    return _launch_cuda(x, wq, tau, bias, splits, scale)


@sparse_linear_q_op.register_fake
def _sparse_linear_q_fake(x, wq, scale, tau, bias, splits):
    return x.new_empty(x.shape[:-1] + (sum(splits),))


@torch.library.custom_op("wisparse::mask", mutates_args=())
def mask_op(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """x * [|x| > tau] (tau float32 [in]); one kernel on CUDA instead of PyTorch's abs / compare / where."""
    return masked(x, tau)


@mask_op.register_kernel("cuda")
def _mask_cuda(x, tau):
    x2 = x.contiguous()
    y = torch.empty_like(x2)
    k = x.shape[-1]
    n = x2.numel() // max(k, 1)
    if n == 0 or k == 0:
        return y
    key = ("mask", x.dtype, k, n, x.device)
    spec = _specs.get(key)
    if spec is None:
        spec = _specs[key] = mask_spec(x.dtype, k, n, arch=device_arch(x.device), sms=sm_count(x.device))
    launch(spec, [x2.data_ptr(), tau.contiguous().data_ptr()], y.data_ptr(),
           torch.cuda.current_stream(x.device).cuda_stream, x.device.index or 0)
    return y


@mask_op.register_fake
def _mask_fake(x, tau):
    return torch.empty_like(x)
