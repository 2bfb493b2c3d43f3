"""Launch geometry: shapes and a dtype in, kernel name, PTX, grid, block, shared memory and int32 arguments out.

`launch_spec` is the one plain function that computes all of it (docs/KERNEL_ABI.md); the torch op and the
TensorRT plugin's ahead-of-time function both call it, so what the GPU tests launch is what an engine embeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import WisparseError
from .build import SOURCE, compile_ptx

THREADS = 256
ROWS = (1, 2, 4, 8)        # rows of x per block (template R)
TILES = (128, 64, 32, 16)  # output columns per block (template TN), widest first
CLUSTERS = (1, 2, 4, 8)    # blocks sharing one column tile, splitting the input channels (template C)
MAX_SPLITS = 3
DTYPES = {"bf16": "bf16", "bfloat16": "bf16", torch.bfloat16: "bf16",
          "f16": "f16", "fp16": "f16", "float16": "f16", torch.float16: "f16"}


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to launch one kernel: what TensorRT's ahead-of-time plugin returns, and what torch uses."""

    name: str
    ptx: str
    grid: tuple[Any, Any, int]   # ints, or symbolic expressions when rows are symbolic (TensorRT)
    block: tuple[int, int, int]
    shared_mem: int              # dynamic shared memory bytes (always 0: the kernel uses static shared memory)
    args: tuple[Any, ...]        # the int32 arguments, in order: n_rows, in, ldw, out0, out1, out2
    rows_per_block: int
    tile: int
    vec: int
    cluster: int
    bias: bool


def _cdiv(a, b):
    return (a + b - 1) // b


def pick_tiling(splits: Sequence[int], in_features: int, row_blocks: int = 1, vec: int = 8, sms: int = 132,
                arch: int = 90) -> tuple[int, int]:
    """(column tile, cluster size): about 1.5 to 2.5 blocks per multiprocessor, widest row segments first.

    A cluster splits the input channels of one column tile over its blocks (sm_90), so narrow outputs still fill
    the GPU with 128- or 256-byte row segments, and each block computes only its own slice of the mask.
    """
    lo, hi = 1.45 * sms, 2.6 * sms  # measured on an H200 (docs/BENCHMARKS.md: tiling sweep)
    options = []
    for t in TILES:
        if vec != 8 and t > 32:
            continue
        tiles = sum(_cdiv(s, t) for s in splits) * row_blocks
        for c in CLUSTERS if arch >= 90 else (1,):
            if c > 1 and in_features < 256 * c:
                break
            options.append((t, c, tiles * c))
    inside = [o for o in options if lo <= o[2] <= hi]
    if inside:  # widest tile, then the fewest blocks per cluster
        return max(inside, key=lambda o: (o[0], -o[1]))[:2]
    below = [o for o in options if o[2] < lo]
    if below:  # too little work to fill the GPU: as many blocks as possible
        return max(below, key=lambda o: (o[2], o[0]))[:2]
    return min(options, key=lambda o: (o[2], -o[0]))[:2]


def _dtype(dtype: Any, what: str) -> str:
    dt = DTYPES.get(dtype)
    if dt is None:
        raise WisparseError(f"{what} bfloat16 or float16, not {dtype}")
    return dt


def _check_weight(in_features: int, splits: Sequence[int], ldw: int, vec: int | None) -> int:
    """Refuse what the kernel cannot read; returns the elements per load (8: 16-byte loads, 1: any alignment)."""
    if not 1 <= len(splits) <= MAX_SPLITS or min(splits) <= 0:
        raise WisparseError(f"splits must be 1 to {MAX_SPLITS} positive widths, got {list(splits)}")
    out = sum(splits)
    if in_features <= 0 or ldw < out or in_features * ldw >= 2**31:
        raise WisparseError(f"unsupported weight shape [in={in_features}, ld={ldw}] for out={out}")
    if vec is None:
        vec = 8 if ldw % 8 == 0 and all(s % 8 == 0 for s in splits) else 1
    if vec == 8 and (ldw % 8 or any(s % 8 for s in splits)):
        raise WisparseError("16-byte loads need every split width and the weight's row stride to be multiples of 8")
    return vec


def launch_spec(dtype: Any, in_features: int, splits: Sequence[int], n_rows: Any = 1, *, bias: bool = False,
                ldw: int | None = None, rows_per_block: int | None = None, tile: int | None = None,
                cluster: int | None = None, vec: int | None = None, arch: int | None = None, sms: int = 132,
                cdiv: Callable[[Any, int], Any] = _cdiv, tune: dict[str, int] | None = None) -> LaunchSpec:
    """Kernel name, PTX, grid, block, shared memory and int32 arguments for y = W (x * [|x| > tau]).

    `splits` are the output widths of the fused projections (one entry for a plain linear). `n_rows` may be an
    int or, for TensorRT, a symbolic expression: then `rows_per_block` must be given and `cdiv` must handle it.
    `tune` overrides the kernel's tuning macros (WSP_U, WSP_NPASS, WSP_MINB) and `tile` may then also be 256:
    for benchmark sweeps, never chosen by the heuristics.
    """
    dt = _dtype(dtype, "sparse kernels take")
    splits = [int(s) for s in splits]
    ldw = sum(splits) if ldw is None else int(ldw)
    vec = _check_weight(in_features, splits, ldw, vec)
    if rows_per_block is None:
        if not isinstance(n_rows, int):
            raise WisparseError("rows_per_block is required when n_rows is symbolic")
        rows_per_block = next((r for r in ROWS if r >= n_rows), ROWS[-1])
    if rows_per_block not in ROWS:
        raise WisparseError(f"rows_per_block must be one of {ROWS}")
    row_blocks = cdiv(n_rows, rows_per_block)
    arch = arch or 90
    if tile is None or cluster is None:
        t, c = pick_tiling(splits, in_features, row_blocks if isinstance(row_blocks, int) else 1, vec, sms, arch)
        tile, cluster = tile or t, cluster or c
    if tile not in (TILES + (256,) if tune is not None else TILES) or (vec == 1 and tile > 32):
        raise WisparseError(f"tile {tile} is not supported with {vec}-element loads")
    if cluster not in CLUSTERS or (cluster > 1 and arch < 90):
        raise WisparseError(f"clusters of {cluster} blocks need sm_90 or newer and a size in {CLUSTERS}")
    name = f"wsp_gemv_{dt}_r{rows_per_block}_n{tile}_v{vec}_c{cluster}" + ("_bias" if bias else "")
    name += "".join(f"_{k[4:].lower()}{v}" for k, v in sorted((tune or {}).items()))
    defines = {"WSP_NAME": name, "WSP_F16": int(dt == "f16"), "WSP_R": rows_per_block, "WSP_TN": tile,
               "WSP_V": vec, "WSP_C": cluster, "WSP_BIAS": int(bias), **(tune or {})}
    padded = splits + [0] * (MAX_SPLITS - len(splits))
    grid = (sum(_cdiv(s, tile) for s in splits) * cluster, row_blocks, 1)
    return LaunchSpec(name, compile_ptx(SOURCE, defines, arch), grid, (THREADS, 1, 1), 0,
                      (n_rows, in_features, ldw, *padded), rows_per_block, tile, vec, cluster, bias)


def mask_spec(dtype: Any, in_features: int, n_rows: int, arch: int | None = None, sms: int = 132) -> LaunchSpec:
    """The masking kernel (WSP_MASK in `plugins/sparse_gemv.cu`) for x [n_rows, in]: y = x * [|x| > tau]."""
    dt = _dtype(dtype, "the mask kernel takes")
    name = f"wsp_mask_{dt}"
    ptx = compile_ptx(SOURCE, {"WSP_NAME": name, "WSP_F16": int(dt == "f16"), "WSP_MASK": 1}, arch or 90)
    blocks = max(1, min(_cdiv(n_rows * in_features, THREADS), 8 * sms))
    return LaunchSpec(name, ptx, (blocks, 1, 1), (THREADS, 1, 1), 0, (n_rows, in_features), 1, 0, 1, 1, False)


def bytes_moved(in_features: int, out: int, n_rows: int, keep: float, elem: int = 2) -> int:
    """Fewest bytes a sparse GEMV must move: kept weight rows, x, tau, y."""
    return int(math.ceil(keep * in_features) * out * elem + n_rows * in_features * elem + in_features * 4
               + n_rows * out * elem)
