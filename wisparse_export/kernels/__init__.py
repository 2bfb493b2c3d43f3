"""CUDA sparse decode kernels, the backend of `runtime`: one source (`plugins/sparse_gemv.cu`) for torch and TensorRT.

By concern: `build` (NVRTC, on-disk PTX cache), `geometry` (`launch_spec`: kernel name, PTX, grid, block, int32
arguments; the TensorRT plugin wraps it), `driver` (CUDA driver API load and launch), `ops` (the torch custom ops),
`dispatch` (which path a planned linear takes, fused groups). The weight layout is [in, out] (docs/KERNEL_ABI.md).
These modules work on tensors and on what the runtime hands them; none imports the runtime.
"""

from .build import SOURCE, cache_dir, compile_ptx, nvrtc_version
from .dispatch import KEEP_MAX, Fused, Planned, fusable, kernel_layout, preload, sparse_linear, supports, use_kernel
from .driver import check_versions, device_arch, driver_version, function, launch, sm_count
from .geometry import (
    CLUSTERS,
    DTYPES,
    MAX_SPLITS,
    ROWS,
    THREADS,
    TILES,
    LaunchSpec,
    bytes_moved,
    launch_spec,
    mask_spec,
    pick_tiling,
)
from .ops import mask_op, reference, sparse_linear_op

__all__ = ["CLUSTERS", "DTYPES", "KEEP_MAX", "MAX_SPLITS", "ROWS", "SOURCE", "THREADS", "TILES", "Fused", "LaunchSpec",
           "Planned", "bytes_moved", "cache_dir", "check_versions", "compile_ptx", "device_arch", "driver_version",
           "fusable", "function", "kernel_layout", "launch", "launch_spec", "mask_op", "mask_spec", "nvrtc_version",
           "pick_tiling", "preload", "reference", "sparse_linear", "sparse_linear_op", "sm_count", "supports",
           "use_kernel"]
