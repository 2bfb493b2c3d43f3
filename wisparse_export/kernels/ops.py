"""The torch custom ops `wisparse::sparse_linear` and `wisparse::mask`: plain PyTorch on CPU, our kernels on CUDA.

Registered through torch.library, so they work under CUDA graphs and torch.compile.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..scores import masked
from .driver import device_arch, launch, sm_count
from .geometry import LaunchSpec, launch_spec, mask_spec


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


@torch.library.custom_op("wisparse::sparse_linear", mutates_args=())
def sparse_linear_op(x: torch.Tensor, wt: torch.Tensor, tau: torch.Tensor, bias: torch.Tensor | None,
                     splits: list[int]) -> torch.Tensor:
    """y = x_masked @ wt (+ bias); wt is [in, out] with unit column stride; tau [P, in] float32."""
    return reference(x, wt, tau, bias, splits)


_specs: dict[tuple, LaunchSpec] = {}  # the ops' hot path: shapes -> spec, without re-reading any file


@sparse_linear_op.register_kernel("cuda")
def _sparse_linear_cuda(x, wt, tau, bias, splits):
    k = x.shape[-1]
    x2 = x.reshape(-1, k).contiguous()
    n = x2.shape[0]
    out = sum(splits)
    y = torch.empty(x.shape[:-1] + (out,), dtype=x.dtype, device=x.device)
    if n == 0:
        return y
    if wt.stride(1) != 1 or wt.shape[0] != k or wt.shape[1] != out or wt.dtype != x.dtype:
        raise ValueError(f"weight must be [in={k}, out={out}] of {x.dtype} with unit column stride")
    tau = tau.contiguous()
    aligned = wt.data_ptr() % 16 == 0 and x2.data_ptr() % 2 == 0
    vec = None if aligned else 1
    if vec is None and (wt.stride(0) % 8 or any(s % 8 for s in splits)):
        vec = 1
    key = (x.dtype, k, tuple(splits), n, bias is not None, wt.stride(0), vec, x.device)
    spec = _specs.get(key)
    if spec is None:
        spec = _specs[key] = launch_spec(x.dtype, k, splits, n, bias=bias is not None, ldw=wt.stride(0), vec=vec,
                                         sms=sm_count(x.device), arch=device_arch(x.device))
    ptrs = [x2.data_ptr(), wt.data_ptr(), tau.data_ptr()] + ([bias.contiguous().data_ptr()] if bias is not None else [])
    launch(spec, ptrs, y.data_ptr(), torch.cuda.current_stream(x.device).cuda_stream, x.device.index or 0)
    return y


@sparse_linear_op.register_fake
def _sparse_linear_fake(x, wt, tau, bias, splits):
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
