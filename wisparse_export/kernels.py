"""CUDA sparse decode kernels: NVRTC build with an on-disk cache, driver-API launch, and the torch custom op.

One source (`plugins/sparse_gemv.cu`) serves PyTorch and TensorRT. `launch_spec` is the one plain function that
turns shapes and a dtype into (kernel name, PTX, grid, block, shared memory, int32 arguments); the torch op here and
the TensorRT plugin's ahead-of-time function both call it, so what the GPU tests launch is what an engine embeds.
The weight layout is [in, out] (docs/KERNEL_ABI.md): `prepare(model)` converts each SparseLinear once, in place,
and keeps `nn.Linear.weight` as a transposed view of the same storage, so no weight is held twice.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import WisparseError
from .scores import masked

SOURCE = "sparse_gemv.cu"
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
    dt = DTYPES.get(dtype)
    if dt is None:
        raise WisparseError(f"sparse kernels take bfloat16 or float16, not {dtype}")
    splits = [int(s) for s in splits]
    if not 1 <= len(splits) <= MAX_SPLITS or min(splits) <= 0:
        raise WisparseError(f"splits must be 1 to {MAX_SPLITS} positive widths, got {splits}")
    out = sum(splits)
    ldw = out if ldw is None else int(ldw)
    if in_features <= 0 or ldw < out or in_features * ldw >= 2**31:
        raise WisparseError(f"unsupported weight shape [in={in_features}, ld={ldw}] for out={out}")
    if vec is None:
        vec = 8 if ldw % 8 == 0 and all(s % 8 == 0 for s in splits) else 1
    if vec == 8 and (ldw % 8 or any(s % 8 for s in splits)):
        raise WisparseError("16-byte loads need every split width and the weight's row stride to be multiples of 8")
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
    ptx = compile_ptx(SOURCE, defines, arch)
    padded = list(splits) + [0] * (MAX_SPLITS - len(splits))
    grid = (sum(_cdiv(s, tile) for s in splits) * cluster, row_blocks, 1)
    return LaunchSpec(name, ptx, grid, (THREADS, 1, 1), 0, (n_rows, in_features, ldw, *padded),
                      rows_per_block, tile, vec, cluster, bias)


def mask_spec(dtype: Any, in_features: int, n_rows: int, arch: int | None = None, sms: int = 132) -> LaunchSpec:
    """The masking kernel (WSP_MASK in `plugins/sparse_gemv.cu`) for x [n_rows, in]: y = x * [|x| > tau]."""
    dt = DTYPES.get(dtype)
    if dt is None:
        raise WisparseError(f"the mask kernel takes bfloat16 or float16, not {dtype}")
    name = f"wsp_mask_{dt}"
    ptx = compile_ptx(SOURCE, {"WSP_NAME": name, "WSP_F16": int(dt == "f16"), "WSP_MASK": 1}, arch or 90)
    blocks = max(1, min(_cdiv(n_rows * in_features, THREADS), 8 * sms))
    return LaunchSpec(name, ptx, (blocks, 1, 1), (THREADS, 1, 1), 0, (n_rows, in_features), 1, 0, 1, 1, False)


# ---------------------------------------------------------------- NVRTC build and on-disk cache


def _sources_dir() -> Path:
    try:
        from importlib import resources

        return Path(str(resources.files("wisparse_export.plugins")))
    except ModuleNotFoundError:  # running from a source tree that is not installed
        return Path(__file__).resolve().parent.parent / "plugins"


def cache_dir() -> Path:
    return Path(os.environ.get("WISPARSE_KERNEL_CACHE", Path.home() / ".cache" / "wisparse" / "kernels"))


def _nvrtc():
    """The NVRTC bindings; WISPARSE_NVRTC=/path/libnvrtc.so.N picks a compiler other than the pip wheel's."""
    path = os.environ.get("WISPARSE_NVRTC")
    if path:  # loaded first, cuda-pathfinder finds it already in the process and uses it
        ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:
        raise WisparseError("the CUDA kernels need NVRTC: pip install 'wisparse-export[cuda]'") from e
    return nvrtc


def nvrtc_version() -> tuple[int, int]:
    nvrtc = _nvrtc()
    err, major, minor = nvrtc.nvrtcVersion()
    _check_nvrtc(err, "nvrtcVersion")
    return int(major), int(minor)


def _check_nvrtc(err, what: str, prog=None) -> None:
    nvrtc = _nvrtc()

    if err == nvrtc.nvrtcResult.NVRTC_SUCCESS:
        return
    log = ""
    if prog is not None:
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        buf = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, buf)
        log = buf.decode(errors="replace").strip()
    raise RuntimeError(f"{what} failed ({err.name}){': ' + log if log else ''}")


_build_lock = threading.Lock()
_ptx_memo: dict[tuple[Path, str], str] = {}


def compile_ptx(source: str, defines: dict[str, Any], arch: int = 90, cubin: bool = False,
                extra: Sequence[str] = ()) -> Any:
    """PTX (or, with cubin=True, a cubin and NVRTC's log) for one configuration, cached by content.

    The cache key holds the source text, the options, the target and NVRTC's version, so a changed kernel, a
    different GPU or another compiler never reuses a stale file.
    """
    nvrtc = _nvrtc()
    text = (_sources_dir() / source).read_text()
    ver = nvrtc_version()
    opts = [f"--gpu-architecture={'sm' if cubin else 'compute'}_{arch}", "--std=c++17", *extra,
            *(f"-D{k}={v}" for k, v in sorted(defines.items()))]
    key = hashlib.sha256("\0".join([text, *opts, f"nvrtc{ver}"]).encode()).hexdigest()[:20]
    path = cache_dir() / f"{defines.get('WSP_NAME', 'kernel')}-sm{arch}-{key}.{'cubin' if cubin else 'ptx'}"
    if not cubin and (path, key) in _ptx_memo:
        return _ptx_memo[path, key]
    if path.is_file() and not cubin:
        _ptx_memo[path, key] = path.read_text()
        return _ptx_memo[path, key]
    with _build_lock:
        err, prog = nvrtc.nvrtcCreateProgram(text.encode(), source.encode(), 0, [], [])
        _check_nvrtc(err, "nvrtcCreateProgram")
        try:
            (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
            _check_nvrtc(err, f"compiling {source} with {' '.join(opts)}", prog)
            if cubin:
                err, size = nvrtc.nvrtcGetCUBINSize(prog)
                _check_nvrtc(err, "nvrtcGetCUBINSize")
                buf = b" " * size
                (err,) = nvrtc.nvrtcGetCUBIN(prog, buf)
                _check_nvrtc(err, "nvrtcGetCUBIN")
                _, lsize = nvrtc.nvrtcGetProgramLogSize(prog)
                log = b" " * lsize
                nvrtc.nvrtcGetProgramLog(prog, log)
                return buf, log.decode(errors="replace")
            err, size = nvrtc.nvrtcGetPTXSize(prog)
            _check_nvrtc(err, "nvrtcGetPTXSize")
            buf = b" " * size
            (err,) = nvrtc.nvrtcGetPTX(prog, buf)
            _check_nvrtc(err, "nvrtcGetPTX")
        finally:
            nvrtc.nvrtcDestroyProgram(prog)
        ptx = buf.rstrip(b"\0 ").decode()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(ptx)
            os.replace(tmp, path)
        except OSError:
            pass  # an unwritable cache only costs a recompile
        _ptx_memo[path, key] = ptx
        return ptx


# ---------------------------------------------------------------- CUDA driver API: load and launch


def _cu(result, what: str):
    from cuda.bindings import driver as cu

    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != cu.CUresult.CUDA_SUCCESS:
        _, msg = cu.cuGetErrorString(err)
        raise RuntimeError(f"{what} failed: {err.name} ({msg.decode() if msg else ''})")
    return rest[0] if len(rest) == 1 else rest


def driver_version() -> tuple[int, int]:
    from cuda.bindings import driver as cu

    _cu(cu.cuInit(0), "cuInit")
    v = _cu(cu.cuDriverGetVersion(), "cuDriverGetVersion")
    return v // 1000, (v % 1000) // 10


def check_versions() -> None:
    """PTX from an NVRTC newer than the driver does not load: say so plainly instead of failing at load."""
    nv, drv = nvrtc_version(), driver_version()
    if nv > drv:
        raise WisparseError(
            f"NVRTC {nv[0]}.{nv[1]} emits PTX that this driver (CUDA {drv[0]}.{drv[1]}) cannot load; install the "
            f"matching compiler: pip install 'nvidia-cuda-nvrtc=={drv[0]}.{drv[1]}.*'")


_functions: dict[tuple[int, str, int], Any] = {}
_load_lock = threading.Lock()


def _ensure_context(device: int) -> None:
    from cuda.bindings import driver as cu

    _cu(cu.cuInit(0), "cuInit")
    ctx = _cu(cu.cuCtxGetCurrent(), "cuCtxGetCurrent")
    if int(ctx) == 0:  # a thread torch has not used yet: take the primary context torch uses
        dev = _cu(cu.cuDeviceGet(device), "cuDeviceGet")
        _cu(cu.cuCtxSetCurrent(_cu(cu.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")), "cuCtxSetCurrent")


def function(spec: LaunchSpec, device: int = 0):
    """The loaded CUfunction for a spec on a device (PTX JIT-compiled by the driver once, then reused)."""
    key = (device, spec.name, hash(spec.ptx))
    fn = _functions.get(key)
    if fn is not None:
        return fn
    from cuda.bindings import driver as cu

    with _load_lock:
        if key not in _functions:
            check_versions()
            _ensure_context(device)
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"kernel {spec.name} was first needed during CUDA graph capture; run the model "
                                   "once before capturing (kernels.prepare loads the decode kernels)")
            mod = _cu(cu.cuModuleLoadData(spec.ptx.encode() + b"\0"), f"loading {spec.name}")
            _functions[key] = _cu(cu.cuModuleGetFunction(mod, spec.name.encode()), f"cuModuleGetFunction {spec.name}")
    return _functions[key]


def launch(spec: LaunchSpec, pointers: Sequence[int], out: int, stream: int, device: int = 0,
           trailing: Sequence[int] = ()) -> None:
    """Launch with device pointers (inputs in ABI order), the spec's int32 arguments and the output pointer.

    `trailing` pointers follow the output: only the benchmark's profiling build (WSP_PROF) takes one.
    """
    from cuda.bindings import driver as cu

    fn = function(spec, device)
    values = [ctypes.c_void_p(p) for p in pointers] + [ctypes.c_int32(int(a)) for a in spec.args]
    values += [ctypes.c_void_p(p) for p in (out, *trailing)]
    params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
    _cu(cu.cuLaunchKernel(fn, *(int(g) for g in spec.grid), *spec.block, spec.shared_mem, cu.CUstream(stream),
                          ctypes.addressof(params), 0), f"launching {spec.name}")


# ---------------------------------------------------------------- the torch op


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


_specs: dict[tuple, LaunchSpec] = {}  # the op's hot path: shapes -> spec, without re-reading any file


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
                                         sms=_sm_count(x.device), arch=_arch(x.device))
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
        spec = _specs[key] = mask_spec(x.dtype, k, n, arch=_arch(x.device), sms=_sm_count(x.device))
    launch(spec, [x2.data_ptr(), tau.contiguous().data_ptr()], y.data_ptr(),
           torch.cuda.current_stream(x.device).cuda_stream, x.device.index or 0)
    return y


@mask_op.register_fake
def _mask_fake(x, tau):
    return torch.empty_like(x)


_props: dict[int, tuple[int, int]] = {}


def _device_props(device: torch.device) -> tuple[int, int]:
    i = device.index if device.index is not None else torch.cuda.current_device()
    if i not in _props:
        p = torch.cuda.get_device_properties(i)
        _props[i] = (p.multi_processor_count, p.major * 10 + p.minor)
    return _props[i]


def _sm_count(device: torch.device) -> int:
    return _device_props(device)[0]


def _arch(device: torch.device) -> int:
    """Target the GPU at hand, capped at the newest architecture this NVRTC knows."""
    nvrtc = _nvrtc()
    cap = _device_props(device)[1]
    _, archs = nvrtc.nvrtcGetSupportedArchs()
    usable = [a for a in archs if a <= cap]
    if not usable:
        raise WisparseError(f"NVRTC {nvrtc_version()} cannot target compute capability {cap / 10:.1f}")
    return max(usable)


# ---------------------------------------------------------------- SparseLinear integration


class _Group:
    """Linears that share one input (q/k/v, gate/up): one launch over their concatenated [in, out] weights."""

    def __init__(self, mods: list[nn.Module]):
        self.mods = mods
        self.splits = [m.out_features for m in mods]
        self.wt = torch.cat([m.weight.detach().t() for m in mods], dim=1).contiguous()
        self.tau = torch.stack([m.tau for m in mods]).contiguous()
        has_bias = mods[0].bias is not None
        self.bias = torch.cat([m.bias.detach() for m in mods]).contiguous() if has_bias else None
        col = 0
        for p, m in enumerate(mods):  # members keep working alone: their tensors become views of the group's
            s = self.splits[p]
            m.dense.weight = nn.Parameter(self.wt[:, col:col + s].t(), requires_grad=False)
            if has_bias:
                m.dense.bias = nn.Parameter(self.bias[col:col + s], requires_grad=False)
            m._buffers["tau"] = self.tau[p]
            m._wsp_group, m._wsp_index = self, p
            col += s
        self.x: torch.Tensor | None = None
        self.ys: tuple[torch.Tensor, ...] = ()
        self.pending: set[int] = set()

    @property
    def dense(self) -> bool:
        """Every member has threshold 0: nothing finite is dropped, one dense matmul serves the whole group."""
        return all(m.threshold <= 0 for m in self.mods)

    def __call__(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self.x is x and index in self.pending:  # a sibling already ran the fused launch on this very input
            self.pending.discard(index)
            y = self.ys[index]
            if not self.pending:
                self.x, self.ys = None, ()
            return y
        if self.dense:
            y = nn.functional.linear(x, self.wt.t(), self.bias)
        else:
            y = sparse_linear_op(x, self.wt, self.tau, self.bias, self.splits)
        self.x, self.ys = x, tuple(y.split(self.splits, dim=-1))
        self.pending = set(range(len(self.mods))) - {index}
        return self.ys[index]


# Rows -> the largest union keep fraction (1 - s**rows for planned sparsity s) at which the kernel beat the cuBLAS
# path (one masking kernel, then cuBLAS) end to end on the H200 (docs/BENCHMARKS.md, 8B-shaped decode). The union
# of several rows' kept channels fills up fast, and the kernel's fp32 FMAs grow with the rows: 2 rows take the
# kernel from s = 0.5 (1.36x vs 0.95x), 3-4 rows from s = 0.5 too (3 rows: 1.23x vs 0.95x; 4 rows: 1.04x vs 0.95x;
# at s = 0.25 0.94x vs 0.95x), 5+ rows never. One row takes the kernel at any planned sparsity above 0: its own dense
# walk beat masking + cuBLAS from s = 0.02 (benchmarks/profile_kernel.py); at threshold 0 sparse_linear skips the mask.
KEEP_MAX = {1: 1.0, 2: 0.75, 3: 0.94, 4: 0.94}


def use_kernel(module: nn.Module, rows: int) -> bool:
    """Host-side choice from shapes and the planned sparsity only (no synchronisation, graph- and compile-safe)."""
    if rows not in KEEP_MAX:
        return False
    group = getattr(module, "_wsp_group", None)
    s = min(m.sparsity for m in group.mods) if group is not None else module.sparsity
    return 1.0 - s**rows <= KEEP_MAX[rows]


def _cublas(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """cuBLAS on masked x; with threshold 0 (tau = 0 drops no finite input) the plain product, no mask launch."""
    return module.dense(x if module.threshold <= 0 else mask_op(x, module.tau))


def sparse_linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """SparseLinear.forward for backend "cuda": the kernel for decode rows, cuBLAS on masked x where it is faster,
    and the plain dense matmul for a layer planned at sparsity 0 (the kernel's dense walk is ~8% slower there).

    Every choice reads host-side values only (shapes, planned sparsity, threshold), so it is graph- and compile-safe,
    and a re-thresholded module (`SparseLinear.set`) takes its new path on the next call.
    """
    n = x.numel() // max(x.shape[-1], 1)
    if x.dtype not in (torch.bfloat16, torch.float16) or module.weight.dtype != x.dtype:
        return module.dense(masked(x, module.tau))
    group = getattr(module, "_wsp_group", None)
    if group is not None and not torch.compiler.is_compiling():
        return group(module._wsp_index, x) if group.dense or use_kernel(module, n) else _cublas(module, x)
    if module.threshold <= 0 or not use_kernel(module, n):
        return _cublas(module, x)
    return sparse_linear_op(x, module.weight.t(), module.tau, module.bias, [module.out_features])


def shared_input_groups(model: nn.Module) -> list[list[str]]:
    """Names of SparseLinears that receive the very same input tensor, found by one short forward pass."""
    from .runtime import SparseLinear

    names = {m: n for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    seen: list[tuple[str, torch.Tensor]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append((names[mod], args[0]))) for m in names]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 2, 3, 4]], device=device))
    except Exception:  # not a causal LM taking input_ids: no fusion, each linear runs alone
        return []
    finally:
        for h in hooks:
            h.remove()
    groups: list[list[str]] = []
    owner: dict[int, list[str]] = {}
    for name, x in seen:
        g = owner.setdefault(id(x), [])
        if not g:
            groups.append(g)
        if name not in g:
            g.append(name)
    return [g for g in groups if len(g) > 1]


def prepare(model: nn.Module, fuse: bool = True, groups: list[list[str]] | None = None) -> nn.Module:
    """Convert every SparseLinear on a CUDA device (bf16/fp16) to the kernel layout once and switch it to the kernels.

    Groups of linears that share an input (q/k/v, gate/up) become one fused launch, unless fuse=False.
    The decode kernels are compiled (or read from the disk cache) and loaded here, outside any graph capture.
    """
    from .runtime import SparseLinear

    mods = {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    eligible = {n: m for n, m in mods.items()
                if m.backend != "cuda" and m.weight.is_cuda and m.weight.dtype in (torch.bfloat16, torch.float16)}
    if not eligible:
        return model
    if fuse and groups is None:
        groups = shared_input_groups(model)
    fused: set[str] = set()
    for g in (groups or []) if fuse else []:
        ms = [eligible.get(n) for n in g]
        if len(g) < 2 or len(g) > MAX_SPLITS or any(m is None for m in ms):
            continue
        if len({(m.in_features, m.weight.dtype, m.bias is None, m.weight.device) for m in ms}) != 1:
            continue
        if any(m.out_features % 8 for m in ms):
            continue
        _Group(ms)
        fused.update(g)
    for n, m in eligible.items():
        if n not in fused:
            wt = m.weight.detach().t().contiguous()
            m.dense.weight = nn.Parameter(wt.t(), requires_grad=False)
            m._wsp_group = None
        m.backend = "cuda"
    # Compile and load now, outside any graph capture: the masking kernel of the cuBLAS path and every decode-row
    # variant, once per distinct configuration (a model repeats a handful of shapes across its layers).
    needed = set()
    for m in eligible.values():
        g = m._wsp_group
        splits, ldw = (tuple(g.splits), g.wt.stride(0)) if g is not None else ((m.out_features,), m.out_features)
        for sp in {splits, (m.out_features,)}:
            needed.add((m.weight.dtype, m.weight.device, m.in_features, sp, ldw, m.bias is not None))
    for dtype, dev in {(d, dev) for d, dev, *_ in needed}:
        function(mask_spec(dtype, 8, 1, arch=_arch(dev), sms=_sm_count(dev)), dev.index or 0)
    for dtype, dev, in_features, sp, ldw, bias in needed:
        for rows in ROWS:
            spec = launch_spec(dtype, in_features, list(sp), rows, bias=bias, ldw=ldw, sms=_sm_count(dev),
                               arch=_arch(dev))
            function(spec, dev.index or 0)
    return model


def bytes_moved(in_features: int, out: int, n_rows: int, keep: float, elem: int = 2) -> int:
    """Fewest bytes a sparse GEMV must move: kept weight rows, x, tau, y."""
    return int(math.ceil(keep * in_features) * out * elem + n_rows * in_features * elem + in_features * 4
               + n_rows * out * elem)
