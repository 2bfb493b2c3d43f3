"""CUDA driver API: load a spec's PTX once per device, launch it on a stream; the GPU's size and architecture."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import WisparseError
from .build import nvrtc_version, supported_archs
from .geometry import LaunchSpec


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


_functions: dict[tuple[int, str, int, int], Any] = {}
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
    key = (device, spec.name, hash(spec.ptx), spec.shared_mem)
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
                                   "once before capturing (runtime.to_kernels loads the decode kernels)")
            mod = _cu(cu.cuModuleLoadData(spec.ptx.encode() + b"\0"), f"loading {spec.name}")
            fn = _cu(cu.cuModuleGetFunction(mod, spec.name.encode()), f"cuModuleGetFunction {spec.name}")
            if spec.shared_mem:  # static + dynamic shared memory above 48 KiB needs this opt-in
                attr = cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
                _cu(cu.cuFuncSetAttribute(fn, attr, spec.shared_mem), f"shared memory of {spec.name}")
            _functions[key] = fn
    return _functions[key]


def launch(spec: LaunchSpec, pointers: Sequence[int], out: int, stream: int, device: int = 0,
           trailing: Sequence[int] = (), pdl: bool = False) -> None:
    """Launch with device pointers (inputs in ABI order), the spec's int32 arguments and the output pointer.

    `trailing` pointers follow the output: only the benchmark's profiling build (WSP_PROF) takes one. `pdl`:
    programmatic dependent launch (sm_90), for builds whose blocks wait for the previous kernel (WSP_PDL).
    """
    from cuda.bindings import driver as cu

    fn = function(spec, device)
    values = [ctypes.c_void_p(p) for p in pointers] + [ctypes.c_int32(int(a)) for a in spec.args]
    values += [ctypes.c_void_p(p) for p in (out, *trailing)]
    params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
    if not pdl:
        _cu(cu.cuLaunchKernel(fn, *(int(g) for g in spec.grid), *spec.block, spec.shared_mem, cu.CUstream(stream),
                              ctypes.addressof(params), 0), f"launching {spec.name}")
        return
    _cu(cu.cuLaunchKernelEx(_pdl_config(spec, stream), fn, ctypes.addressof(params), 0), f"launching {spec.name}")


def _pdl_config(spec: LaunchSpec, stream: int):
    """The launch configuration that lets the kernel start before the previous one in the stream has finished."""
    from cuda.bindings import driver as cu

    attr = cu.CUlaunchAttribute()
    attr.id = cu.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
    attr.value.programmaticStreamSerializationAllowed = 1
    cfg = cu.CUlaunchConfig()
    cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = (int(g) for g in spec.grid)
    cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = spec.block
    cfg.sharedMemBytes, cfg.hStream = spec.shared_mem, cu.CUstream(stream)
    cfg.attrs, cfg.numAttrs = [attr], 1
    return cfg


_props: dict[int, tuple[int, int]] = {}


def _device_props(device: torch.device) -> tuple[int, int]:
    i = device.index if device.index is not None else torch.cuda.current_device()
    if i not in _props:
        p = torch.cuda.get_device_properties(i)
        _props[i] = (p.multi_processor_count, p.major * 10 + p.minor)
    return _props[i]


def sm_count(device: torch.device) -> int:
    return _device_props(device)[0]


def device_arch(device: torch.device) -> int:
    """Target the GPU at hand, capped at the newest architecture this NVRTC knows."""
    cap = _device_props(device)[1]
    usable = [a for a in supported_archs() if a <= cap]
    if not usable:
        raise WisparseError(f"NVRTC {nvrtc_version()} cannot target compute capability {cap / 10:.1f}")
    return max(usable)
