"""Launch geometry: shapes, a dtype and a weight format in; kernel name, PTX, grid, block, shared memory and int32
arguments out.

`launch_spec` is the one plain function that computes all of it (docs/KERNEL_ABI.md); the torch op and the
TensorRT plugin's ahead-of-time function both call it, so what the GPU tests launch is what an engine embeds.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import WisparseError
from ..quant import FORMATS, WeightFormat
from .build import SOURCE, compile_ptx

THREADS = 256
ROWS = (1, 2, 4, 8)        # rows of x per block (template R)
TILES = (128, 64, 32, 16)  # output columns per block (template TN), widest first
CLUSTERS = (1, 2, 4, 8)    # blocks sharing one column tile, splitting the input channels (template C)
MAX_SPLITS = 3
WQ = {"fp8_e4m3": 1, "int8": 2}  # weight format -> the kernel's WSP_WQ (0: weights in x's dtype)
DTYPES = {"bf16": "bf16", "bfloat16": "bf16", torch.bfloat16: "bf16",
          "f16": "f16", "fp16": "f16", "float16": "f16", torch.float16: "f16"}


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to launch one kernel: what TensorRT's ahead-of-time plugin returns, and what torch uses."""

    name: str
    ptx: str
    grid: tuple[Any, Any, int]   # ints, or symbolic expressions when rows are symbolic (TensorRT)
    block: tuple[int, int, int]
    shared_mem: int              # dynamic shared memory bytes: 0 in every shipped build (static shared memory only)
    args: tuple[Any, ...]        # the int32 arguments, in order: n_rows, in, ldw, out0, out1, out2
    rows_per_block: int
    tile: int
    vec: int
    cluster: int
    bias: bool
    weights: str | None = None   # quantized weights' format (quant.FORMATS): the kernel also takes `scale`
    workspace: int = 0           # list GEMV: float32 partial sums it needs (`ws`), any contents
    semaphores: int = 0          # list GEMV: int32 arrival counters (`sem`), zeroed once, zero after every launch


def _cdiv(a, b):
    return (a + b - 1) // b


def pick_tiling(splits: Sequence[int], in_features: int, row_blocks: int = 1, vec: int = 8, sms: int = 132,
                arch: int = 90, tiles: Sequence[int] = TILES) -> tuple[int, int]:
    """(column tile, cluster size): about 1.5 to 2.5 blocks per multiprocessor, widest row segments first.

    A cluster splits the input channels of one column tile over its blocks (sm_90), so narrow outputs still fill
    the GPU with 128- or 256-byte row segments, and each block computes only its own slice of the mask.
    """
    lo, hi = 1.45 * sms, 2.6 * sms  # measured on an H200 (docs/BENCHMARKS.md: tiling sweep)
    options = []
    for t in tiles:
        if vec == 1 and t > 32:
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


def as_weight_format(weights: WeightFormat | str | None) -> WeightFormat | None:
    """None (weights in x's dtype), a quant.WeightFormat, or its name; anything else refused in one line."""
    fmt = FORMATS.get(weights) if isinstance(weights, str) else weights
    if weights is not None and (not isinstance(fmt, WeightFormat) or fmt.name not in WQ):
        raise WisparseError(f"the kernels take weights in x's dtype (None) or {' or '.join(WQ)}, not {weights!r}")
    return fmt


def _tiles(fmt: WeightFormat | None, vec: int, rows: int) -> tuple[int, ...]:
    """Column tiles of a variant. 1-byte weights read with 16-byte loads also take 256 columns (the 256-byte row
    segments of 128 16-bit columns) up to 4 rows: 8 rows x 256 columns of partial sums exceed 48 KB of shared memory.
    At one row, launch_spec takes 256 only where each block of the cluster walks 2048+ channels: shorter walks run
    faster as 128 columns over half the blocks (the quantized sweep, docs/BENCHMARKS.md)."""
    if vec == 1:
        return tuple(t for t in TILES if t <= 32)
    return (256, *TILES) if fmt is not None and vec == 16 and rows <= 4 else TILES


def _check_weight(in_features: int, splits: Sequence[int], ldw: int, vec: int | None, vecs: Sequence[int] = (8, 1)
                  ) -> int:
    """Refuse what the kernel cannot read; returns the elements per load: 16-byte loads (8 16-bit or 16 one-byte
    weights), 8-byte loads (8 one-byte weights), or 1 (any alignment). `vecs`: the choices, widest first."""
    if not 1 <= len(splits) <= MAX_SPLITS or min(splits) <= 0:
        raise WisparseError(f"splits must be 1 to {MAX_SPLITS} positive widths, got {list(splits)}")
    out = sum(splits)
    if in_features <= 0 or ldw < out or in_features * ldw >= 2**31:
        raise WisparseError(f"unsupported weight shape [in={in_features}, ld={ldw}] for out={out}")
    if vec is None:
        vec = next(v for v in vecs if ldw % v == 0 and all(s % v == 0 for s in splits))
    if vec not in vecs:
        raise WisparseError(f"{vec}-element loads are not one of {list(vecs)} for these weights")
    if ldw % vec or any(s % vec for s in splits):
        raise WisparseError(f"{vec}-element loads need every split width and the weight's row stride to be "
                            f"multiples of {vec}")
    return vec


def _check_arch(fmt: WeightFormat | None, arch: int | None) -> int:
    arch = arch or 90
    if fmt is not None and fmt.name == "fp8_e4m3" and arch < 89:
        raise WisparseError(f"fp8_e4m3 weights need sm_89 or newer (the e4m3 conversion), not sm_{arch}")
    return arch


def _check_cluster(cluster: int, arch: int) -> None:
    if cluster not in CLUSTERS or (cluster > 1 and arch < 90):
        raise WisparseError(f"clusters of {cluster} blocks need sm_90 or newer and a size in {CLUSTERS}")


def _suffix(tune: dict[str, int] | None) -> str:
    """A tuned or ablated build's name suffix: WSP_KL=4096 -> _kl4096 (one PTX per name)."""
    return "".join(f"_{k[4:].lower()}{v}" for k, v in sorted((tune or {}).items()))


def _check_tune(tune: dict[str, int] | None, allowed: Sequence[str]) -> dict[str, int]:
    if tune and not set(tune) <= set(allowed):
        raise WisparseError(f"tuning macros here are {sorted(allowed)}, not {sorted(set(tune) - set(allowed))}")
    return dict(tune or {})


def launch_spec(dtype: Any, in_features: int, splits: Sequence[int], n_rows: Any = 1, *, bias: bool = False,
                ldw: int | None = None, rows_per_block: int | None = None, tile: int | None = None,
                cluster: int | None = None, vec: int | None = None, arch: int | None = None, sms: int = 132,
                cdiv: Callable[[Any, int], Any] = _cdiv, tune: dict[str, int] | None = None,
                weights: WeightFormat | str | None = None) -> LaunchSpec:
    """Kernel name, PTX, grid, block, shared memory and int32 arguments for y = W (x * [|x| > tau]).

    `weights`: None for W in x's dtype, or the format (quant.WeightFormat or its name) of a 1-byte W whose values
    are W * scale[column] (the kernel then takes the float32 `scale` input after tau: docs/KERNEL_ABI.md).

    `splits` are the output widths of the fused projections (one entry for a plain linear). `n_rows` may be an
    int or, for TensorRT, a symbolic expression: then `rows_per_block` must be given and `cdiv` must handle it.
    `tune` overrides the kernel's tuning macros (WSP_U, WSP_NPASS, WSP_MINB) and `tile` may then also be 256:
    for benchmark sweeps, never chosen by the heuristics.
    """
    dt = _dtype(dtype, "sparse kernels take")
    fmt = as_weight_format(weights)
    splits = [int(s) for s in splits]
    ldw = sum(splits) if ldw is None else int(ldw)
    vec = _check_weight(in_features, splits, ldw, vec, (16, 8, 1) if fmt is not None else (8, 1))
    if rows_per_block is None:
        if not isinstance(n_rows, int):
            raise WisparseError("rows_per_block is required when n_rows is symbolic")
        rows_per_block = next((r for r in ROWS if r >= n_rows), ROWS[-1])
    if rows_per_block not in ROWS:
        raise WisparseError(f"rows_per_block must be one of {ROWS}")
    row_blocks = cdiv(n_rows, rows_per_block)
    arch = _check_arch(fmt, arch)
    tiles = _tiles(fmt, vec, rows_per_block)
    if tile is None or cluster is None:
        t, c = pick_tiling(splits, in_features, row_blocks if isinstance(row_blocks, int) else 1, vec, sms, arch,
                           tiles)
        if fmt is not None and rows_per_block == 1 and t == 256 and in_features // c < 2048:
            t, c = pick_tiling(splits, in_features, 1, vec, sms, arch, TILES)  # see _tiles
        tile, cluster = tile or t, cluster or c
    if tile not in (tiles + (256,) if tune is not None else tiles) or (vec == 1 and tile > 32):
        raise WisparseError(f"tile {tile} is not supported with {vec}-element loads and {rows_per_block} rows")
    _check_cluster(cluster, arch)
    wq = f"_{fmt.name}" if fmt is not None else ""
    name = f"wsp_gemv_{dt}{wq}_r{rows_per_block}_n{tile}_v{vec}_c{cluster}" + ("_bias" if bias else "") + _suffix(tune)
    defines = {"WSP_NAME": name, "WSP_F16": int(dt == "f16"), "WSP_R": rows_per_block, "WSP_TN": tile,
               "WSP_V": vec, "WSP_C": cluster, "WSP_BIAS": int(bias), **(tune or {})}
    if fmt is not None:  # absent for 16-bit weights: their PTX stays byte for byte what it was
        defines["WSP_WQ"] = WQ[fmt.name]
    padded = splits + [0] * (MAX_SPLITS - len(splits))
    grid = (sum(_cdiv(s, tile) for s in splits) * cluster, row_blocks, 1)
    return LaunchSpec(name, compile_ptx(SOURCE, defines, arch), grid, (THREADS, 1, 1), 0,
                      (n_rows, in_features, ldw, *padded), rows_per_block, tile, vec, cluster, bias,
                      fmt.name if fmt is not None else None)


def mask_spec(dtype: Any, in_features: int, n_rows: int, arch: int | None = None, sms: int = 132) -> LaunchSpec:
    """The masking kernel (WSP_MASK in `plugins/sparse_gemv.cu`) for x [n_rows, in]: y = x * [|x| > tau]."""
    dt = _dtype(dtype, "the mask kernel takes")
    name = f"wsp_mask_{dt}"
    ptx = compile_ptx(SOURCE, {"WSP_NAME": name, "WSP_F16": int(dt == "f16"), "WSP_MASK": 1}, arch or 90)
    blocks = max(1, min(_cdiv(n_rows * in_features, THREADS), 8 * sms))
    return LaunchSpec(name, ptx, (blocks, 1, 1), (THREADS, 1, 1), 0, (n_rows, in_features), 1, 0, 1, 1, False)


def bytes_moved(in_features: int, out: int, n_rows: int, keep: float, elem: int = 2,
                weights: WeightFormat | str | None = None) -> int:
    """Fewest bytes a sparse GEMV must move: kept weight rows (1 byte per weight and a float32 scale per output for
    quantized `weights`), x, tau, y."""
    w_elem, scales = (1, out * 4) if as_weight_format(weights) is not None else (elem, 0)
    return int(math.ceil(keep * in_features) * out * w_elem + scales + n_rows * in_features * elem
               + in_features * 4 + n_rows * out * elem)


PRODUCERS = {"rmsnorm": 1, "silu_mul": 2}  # producer kind -> the kernel's WSP_PRODUCER
LIST_ROWS = (1, 2, 4)  # rows a producer's list carries per kept channel (the fused decode path: batch 1 to 4)
SPLITS = ("stream_k", "cluster")  # how the list GEMV shares a column tile's entries between blocks (WSP_SPLIT)
# Benchmark knobs (benchmarks/bench_fused.py --ablate): list entries staged per chunk, load depth, blocks per SM;
# WSP_FIXUP (Stream-K without its partials, or without any fix-up) and WSP_PMODE (producer without its list, or
# without its mask) give WRONG outputs: timing only.
LIST_TUNE = ("WSP_KL", "WSP_U", "WSP_MINB", "WSP_FIXUP")
PRODUCER_TUNE = ("WSP_PMODE",)


def _list_rows(n_rows: Any, rows_per_block: int | None) -> int:
    """The rows per list entry: the smallest of LIST_ROWS holding n_rows (rows_per_block when n_rows is symbolic)."""
    if rows_per_block is None:
        if not isinstance(n_rows, int):
            raise WisparseError("rows_per_block is required when n_rows is symbolic")
        rows_per_block = next((r for r in LIST_ROWS if r >= n_rows), 0)
    if rows_per_block not in LIST_ROWS or (isinstance(n_rows, int) and not 1 <= n_rows <= rows_per_block):
        raise WisparseError(f"the fused decode path takes 1 to {LIST_ROWS[-1]} rows in blocks of {LIST_ROWS}, "
                            f"not {n_rows} rows in blocks of {rows_per_block}")
    return rows_per_block


def producer_spec(dtype: Any, in_features: int, n_rows: Any = 1, *, kind: str = "rmsnorm", projections: int = 1,
                  eps: float = 1e-5, ld: int | None = None, rows_per_block: int | None = None,
                  cluster: int | None = None, arch: int | None = None, tune: dict[str, int] | None = None
                  ) -> LaunchSpec:
    """The producer kernel (WSP_PRODUCER): RMSNorm of x, or SiLU(gate) * up of a fused gate/up output, then the
    kept-channel list of each of `projections` tau rows (docs/KERNEL_ABI.md). One cluster: grid = (cluster, 1, 1).

    `ld`: the input's row stride (default in_features for RMSNorm, 2 * in_features for [gate | up]). `tune`:
    PRODUCER_TUNE ablations, timing only."""
    dt = _dtype(dtype, "the producer kernels take")
    if kind not in PRODUCERS:
        raise WisparseError(f"producer kind must be one of {list(PRODUCERS)}, not {kind!r}")
    rows = _list_rows(n_rows, rows_per_block)
    ld = (in_features if kind == "rmsnorm" else 2 * in_features) if ld is None else int(ld)
    if not 1 <= projections <= MAX_SPLITS or in_features <= 0 or ld < in_features * (1 + (kind == "silu_mul")) \
            or projections * in_features * rows >= 2**31:
        raise WisparseError(f"unsupported producer shape: in={in_features}, ld={ld}, projections={projections}")
    arch = arch or 90
    if cluster is None:  # about 1024 or more channels per block, on up to 8 multiprocessors
        cluster = max(c for c in CLUSTERS if c == 1 or (arch >= 90 and in_features >= 1024 * c))
    _check_cluster(cluster, arch)
    tune = _check_tune(tune, PRODUCER_TUNE)
    name = f"wsp_{kind}_{dt}_r{rows}_c{cluster}" + _suffix(tune)
    defines = {"WSP_NAME": name, "WSP_F16": int(dt == "f16"), "WSP_R": rows, "WSP_C": cluster,
               "WSP_PRODUCER": PRODUCERS[kind], **tune}
    eps_bits = struct.unpack("<i", struct.pack("<f", eps if kind == "rmsnorm" else 0.0))[0]
    return LaunchSpec(name, compile_ptx(SOURCE, defines, arch), (cluster, 1, 1), (THREADS, 1, 1), 0,
                      (n_rows, in_features, ld, projections, eps_bits), rows, 0, 1, cluster, False)


def _list_grid(split: str, splits: Sequence[int], in_features: int, vec: int, rows: int, tiles: tuple[int, ...],
               tile: int | None, cluster: int | None, blocks: int | None, minb: int, sms: int, arch: int
               ) -> tuple[int, int, int]:
    """(tile, cluster, blocks) of a list GEMV. Stream-K: the widest tile, a persistent grid of `minb` blocks per
    multiprocessor (or `blocks`). Cluster split: today's kernel's tiling (pick_tiling), C blocks per column tile."""
    if split not in SPLITS:
        raise WisparseError(f"the list GEMV's split is one of {list(SPLITS)}, not {split!r}")
    if split == "stream_k":
        if cluster not in (None, 1):
            raise WisparseError("the Stream-K list GEMV takes no clusters (split='cluster' does)")
        tile = tiles[0] if tile is None else tile
        blocks = sms * minb if blocks is None else int(blocks)
        if blocks < 1:
            raise WisparseError(f"the Stream-K list GEMV needs at least one block, not {blocks}")
        cluster = 1
    elif tile is None or cluster is None:
        t, c = pick_tiling(splits, in_features, 1, vec, sms, arch, tiles)
        tile, cluster = tile or t, cluster or c
    if tile not in tiles:
        raise WisparseError(f"tile {tile} is not supported with {vec}-element loads and {rows} rows")
    _check_cluster(cluster, arch)
    n_tiles = sum(_cdiv(s, tile) for s in splits)
    return tile, cluster, blocks if split == "stream_k" else cluster * n_tiles


def list_spec(dtype: Any, in_features: int, splits: Sequence[int], n_rows: Any = 1, *, bias: bool = False,
              ldw: int | None = None, rows_per_block: int | None = None, tile: int | None = None,
              vec: int | None = None, arch: int | None = None, sms: int = 132,
              weights: WeightFormat | str | None = None, split: str = "stream_k", cluster: int | None = None,
              blocks: int | None = None, tune: dict[str, int] | None = None) -> LaunchSpec:
    """The GEMV over a producer's kept lists (WSP_LIST): y = vals @ W[idx] per projection.

    split="stream_k": a Stream-K split over a persistent grid of 1 (4 rows) or 2 blocks per multiprocessor
    (`blocks` overrides it), the widest column tile (the split no longer needs narrow tiles to fill the GPU);
    `workspace` and `semaphores` size the scratch the launch needs. split="cluster": clusters of `cluster` blocks
    share each column tile's list evenly (today's kernel's tiling unless `tile`/`cluster` are given), reducing in
    distributed shared memory: no scratch (ws and sem are still parameters; null is fine). `tune`: LIST_TUNE."""
    dt = _dtype(dtype, "sparse kernels take")
    fmt = as_weight_format(weights)
    splits = [int(s) for s in splits]
    ldw = sum(splits) if ldw is None else int(ldw)
    vec = _check_weight(in_features, splits, ldw, vec, (16, 8, 1) if fmt is not None else (8, 1))
    rows = _list_rows(n_rows, rows_per_block)
    arch = _check_arch(fmt, arch)
    tune = _check_tune(tune, LIST_TUNE)
    if split == "cluster" and "WSP_FIXUP" in tune:
        raise WisparseError("WSP_FIXUP ablates the Stream-K fix-up; split='cluster' has none")
    tile, cluster, blocks = _list_grid(split, splits, in_features, vec, rows, _tiles(fmt, vec, rows), tile,
                                       cluster, blocks, tune.get("WSP_MINB", 1 if rows > 2 else 2), sms, arch)
    wq = f"_{fmt.name}" if fmt is not None else ""
    name = f"wsp_list_{dt}{wq}_r{rows}_n{tile}_v{vec}" + ("_bias" if bias else "")
    name += (f"_c{cluster}" if split == "cluster" else "") + _suffix(tune)
    defines = {"WSP_NAME": name, "WSP_F16": int(dt == "f16"), "WSP_R": rows, "WSP_TN": tile, "WSP_V": vec,
               "WSP_BIAS": int(bias), "WSP_LIST": 1, **tune}
    if fmt is not None:
        defines["WSP_WQ"] = WQ[fmt.name]
    if split == "cluster":  # absent for Stream-K: its PTX stays byte for byte what it was
        defines.update(WSP_SPLIT=1, WSP_C=cluster)
    n_tiles = sum(_cdiv(s, tile) for s in splits)
    scratch = ((blocks + n_tiles) * rows * tile, n_tiles) if split == "stream_k" else (0, 0)
    return LaunchSpec(name, compile_ptx(SOURCE, defines, arch), (blocks, 1, 1), (THREADS, 1, 1), 0,
                      (n_rows, in_features, ldw, *splits, *[0] * (MAX_SPLITS - len(splits))), rows, tile, vec,
                      cluster, bias, fmt.name if fmt is not None else None, *scratch)
