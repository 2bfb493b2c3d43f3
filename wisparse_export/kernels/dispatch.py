"""Which path a planned linear takes on the GPU, and linears that share an input fused into one launch.

The runtime owns each linear's plan values (`runtime.SparseLinear`); it hands a linear here as a `Planned` and stores
what comes back: a weight in the kernel layout (`kernel_layout`), a `Fused` group's views. Nothing here writes into
a module. Every choice reads host-side values only (shapes, planned sparsity, threshold), so it is graph- and
compile-safe, and a re-thresholded linear takes its new path on the next call.

A quantized linear (`models.quantize_weights`: `weight_format`, `weight_q` [out, in], `weight_scale` [out]) keeps its
`weight` (the dequantized values, for the cuBLAS path of many rows) and also gets its stored form in the kernel
layout; up to `Q_ROWS` rows the kernel reads the 1-byte rows (`ops.sparse_linear_q_op`), at any sparsity.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from ..quant import WeightFormat
from ..scores import masked
from .driver import device_arch, function, sm_count
from .geometry import DTYPES, MAX_SPLITS, ROWS, launch_spec, mask_spec
from .ops import mask_op, sparse_linear_op, sparse_linear_q_op

# Rows -> the largest union keep fraction (1 - s**rows for planned sparsity s) at which the kernel beat the cuBLAS
# path (one masking kernel, then cuBLAS) end to end on the H200 (docs/BENCHMARKS.md, 8B-shaped decode). The union
# of several rows' kept channels fills up fast, and the kernel's fp32 FMAs grow with the rows. 2 rows take the
# kernel from s = 0.5 (1.36x vs 0.95x there). 3 and 4 rows share 0.94, so 3 rows take it from s = 0.392 and 4 rows
# from s = 0.495 (1 - s**rows <= 0.94); measured: at s = 0.5 3 rows 1.23x, 4 rows 1.04x, the cuBLAS path 0.95x; at
# s = 0.25 the cuBLAS path 0.95x and 4 rows' kernel 0.94x; 3 rows between s = 0.25 and 0.5 were not measured.
# 5+ rows never. One row takes the kernel at any planned sparsity above 0: its own dense walk beat masking + cuBLAS
# from s = 0.02 (benchmarks/profile_kernel.py); at threshold 0 `sparse_linear` skips the mask.
KEEP_MAX = {1: 1.0, 2: 0.75, 3: 0.94, 4: 0.94}
# Quantized weights: the kernel reads 1 byte per kept weight where cuBLAS reads 2 per weight of the dequantized
# one, so 1 to Q_ROWS rows take it at every sparsity (0 included: its dense walk). Not yet measured on a GPU
# (benchmarks/bench_kernels.py --weights fp8 int8 times 1 row); the rows limit is the 16-bit kernel's.
Q_ROWS = 4


class Planned(Protocol):
    """What the dispatch reads of a planned linear (`runtime.SparseLinear` is one)."""

    weight: torch.Tensor        # [out, in]; on the kernels a view of an [in, out] tensor with unit column stride
    bias: torch.Tensor | None
    tau: torch.Tensor           # float32 [in]: channel i is kept iff |x_i| > tau_i
    threshold: float            # 0: nothing finite is dropped
    sparsity: float             # the planned sparsity, host-side
    # Quantized linears also carry `weight_format`, `weight_q` ([out, in] view of an [in, out] tensor on the
    # kernels) and `weight_scale` (float32 [out]); `quantized` reads them.


def quantized(layer: Planned) -> bool:
    """Quantized by `models.quantize_weights`: the kernels read its stored form."""
    return getattr(layer, "weight_format", None) is not None


def supports(weight: torch.Tensor, fmt: WeightFormat | None = None) -> bool:
    """The kernels take CUDA weights in bfloat16 or float16; quantized ones (`fmt`) in a format this GPU converts
    (fp8 e4m3 on sm_89 and newer)."""
    if not (weight.is_cuda and weight.dtype in DTYPES):
        return False
    return fmt is None or fmt.name != "fp8_e4m3" or device_arch(weight.device) >= 89


def kernel_layout(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] weight -> the same values as a [out, in] view of a contiguous [in, out] tensor (a kept channel's
    weights are contiguous); no copy when the weight already is such a view."""
    return weight.detach().t().contiguous().t()


def use_kernel(rows: int, sparsity: float) -> bool:
    """The kernel or the cuBLAS path for `rows` rows of x at a planned sparsity (`KEEP_MAX`)."""
    return rows in KEEP_MAX and 1.0 - sparsity**rows <= KEEP_MAX[rows]


def fusable(layers: Sequence[Planned]) -> bool:
    """2 to MAX_SPLITS linears on one device and dtype, of one input width and weight format, all with or all
    without a bias, and output widths that are multiples of 8 (16-byte loads across the concatenated weight)."""
    if not 2 <= len(layers) <= MAX_SPLITS:
        return False
    kinds = {(m.weight.shape[1], m.weight.dtype, m.weight.device, m.bias is None,
              getattr(m, "weight_format", None)) for m in layers}
    return len(kinds) == 1 and all(m.weight.shape[0] % 8 == 0 for m in layers)


class Fused:
    """Linears that share one input (q/k/v, gate/up): one launch over their concatenated [in, out] weights.

    The members keep working alone on `views(index)`, which the runtime stores in place of their own tensors, so
    every weight is held once. Quantized members also have their stored weights and scales concatenated (`wq`,
    `scale`; `q_views(index)`), and the group's launch reads those.
    """

    def __init__(self, members: Sequence[Planned]):
        self.members = list(members)
        self.splits = [m.weight.shape[0] for m in members]
        self.wt = torch.cat([m.weight.detach().t() for m in members], dim=1).contiguous()
        self.tau = torch.stack([m.tau for m in members]).contiguous()
        has_bias = members[0].bias is not None
        self.bias = torch.cat([m.bias.detach() for m in members]).contiguous() if has_bias else None
        q = quantized(members[0])
        self.wq = torch.cat([m.weight_q.t() for m in members], dim=1).contiguous() if q else None
        self.scale = torch.cat([m.weight_scale for m in members]).contiguous() if q else None
        self.x: torch.Tensor | None = None
        self.ys: tuple[torch.Tensor, ...] = ()
        self.pending: set[int] = set()

    def views(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Member `index`'s weight [out, in], bias and tau, as views of the group's tensors."""
        col = sum(self.splits[:index])
        cols = slice(col, col + self.splits[index])
        return self.wt[:, cols].t(), None if self.bias is None else self.bias[cols], self.tau[index]

    def q_views(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A quantized member's stored weight [out, in] and scale [out], as views of the group's tensors."""
        col = sum(self.splits[:index])
        cols = slice(col, col + self.splits[index])
        return self.wq[:, cols].t(), self.scale[cols]

    @property
    def dense(self) -> bool:
        """Every member has threshold 0: nothing finite is dropped, one dense matmul serves the whole group."""
        return all(m.threshold <= 0 for m in self.members)

    @property
    def sparsity(self) -> float:
        """The group's launch keeps the union of its members' channels: the least sparse member decides."""
        return min(m.sparsity for m in self.members)

    def __call__(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self.x is x and index in self.pending:  # a sibling already ran the fused launch on this very input
            self.pending.discard(index)
            y = self.ys[index]
            if not self.pending:
                self.x, self.ys = None, ()
            return y
        if self.wq is not None:
            y = sparse_linear_q_op(x, self.wq, self.scale, self.tau, self.bias, self.splits)
        elif self.dense:
            y = F.linear(x, self.wt.t(), self.bias)
        else:
            y = sparse_linear_op(x, self.wt, self.tau, self.bias, self.splits)
        self.x, self.ys = x, tuple(y.split(self.splits, dim=-1))
        self.pending = set(range(len(self.members))) - {index}
        return self.ys[index]


def _cublas(layer: Planned, x: torch.Tensor) -> torch.Tensor:
    """cuBLAS on masked x; with threshold 0 (tau = 0 drops no finite input) the plain product, no mask launch."""
    return F.linear(x if layer.threshold <= 0 else mask_op(x, layer.tau), layer.weight, layer.bias)


def sparse_linear(layer: Planned, x: torch.Tensor, fused: Fused | None = None, index: int = 0) -> torch.Tensor:
    """A planned linear on the GPU: the kernel for decode rows, cuBLAS on masked x where it is faster, and the plain
    dense matmul at threshold 0 (the kernel's dense walk is ~8% slower there). `fused`: the layer is member `index`
    of that group, one launch for all members (under torch.compile too: dynamo traces the group's bookkeeping).
    Quantized weights: the kernel on the 1-byte rows up to Q_ROWS rows, cuBLAS on the dequantized weight above."""
    n = x.numel() // max(x.shape[-1], 1)
    if x.dtype not in DTYPES or layer.weight.dtype != x.dtype:
        return F.linear(masked(x, layer.tau), layer.weight, layer.bias)
    if quantized(layer):
        if n > Q_ROWS:
            return _cublas(layer, x)
        if fused is not None:
            return fused(index, x)
        return sparse_linear_q_op(x, layer.weight_q.t(), layer.weight_scale, layer.tau, layer.bias,
                                  [layer.weight.shape[0]])
    s = fused.sparsity if fused is not None else layer.sparsity
    if fused is not None:
        return fused(index, x) if fused.dense or use_kernel(n, s) else _cublas(layer, x)
    if layer.threshold <= 0 or not use_kernel(n, s):
        return _cublas(layer, x)
    return sparse_linear_op(x, layer.weight.t(), layer.tau, layer.bias, [layer.weight.shape[0]])


def preload(layers: Iterable[tuple[Planned, Fused | None]]) -> None:
    """Compile (or read from the disk cache) and load, now and outside any graph capture, every kernel these linears
    can launch: the masking kernel of the cuBLAS path and each decode-row variant, once per distinct configuration
    (a model repeats a handful of shapes across its layers)."""
    needed = set()
    for m, fused in layers:
        out, in_features = m.weight.shape
        splits, ldw = (tuple(fused.splits), fused.wt.stride(0)) if fused is not None else ((out,), out)
        fmt = getattr(m, "weight_format", None)
        needed.add((m.weight.dtype, m.weight.device, in_features, splits, ldw, m.bias is not None, fmt))
    for dtype, dev in {(d, dev) for d, dev, *_ in needed}:
        function(mask_spec(dtype, 8, 1, arch=device_arch(dev), sms=sm_count(dev)), dev.index or 0)
    for dtype, dev, in_features, sp, ldw, bias, fmt in needed:
        for rows in ROWS if fmt is None else [r for r in ROWS if r <= Q_ROWS]:
            spec = launch_spec(dtype, in_features, list(sp), rows, bias=bias, ldw=ldw, sms=sm_count(dev),
                               arch=device_arch(dev), weights=fmt)
            function(spec, dev.index or 0)
