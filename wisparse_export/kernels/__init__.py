"""CUDA sparse decode kernels, the backend of `runtime`: one source (`plugins/sparse_gemv.cu`) for torch and TensorRT.

By concern: `build` (NVRTC, on-disk PTX cache), `geometry` (`launch_spec`: kernel name, PTX, grid, block, int32
arguments; the TensorRT plugin wraps it), `driver` (CUDA driver API load and launch), `ops` (the torch custom ops),
`dispatch` (which path a planned linear takes, fused groups). The weight layout is [in, out] (docs/KERNEL_ABI.md).
These modules work on tensors and on what the runtime hands them; none imports the runtime.
"""

from .build import SOURCE, cache_dir, compile_ptx, nvrtc_version
from .dispatch import (
    KEEP_MAX,
    Q_ROWS,
    Fused,
    Planned,
    fusable,
    kernel_layout,
    preload,
    quantized,
    sparse_linear,
    supports,
    use_kernel,
)
from .driver import check_versions, device_arch, driver_version, function, launch, sm_count
from .geometry import (
    CLUSTERS,
    DTYPES,
    LIST_ROWS,
    LIST_TUNE,
    MAX_SPLITS,
    PRODUCER_TUNE,
    PRODUCERS,
    ROWS,
    SPLITS,
    THREADS,
    TILES,
    LaunchSpec,
    as_weight_format,
    bytes_moved,
    launch_spec,
    list_spec,
    mask_spec,
    pick_tiling,
    producer_spec,
)
from .ops import (
    STORAGE,
    compact,
    dequantized,
    list_reference,
    mask_op,
    reference,
    rms_norm,
    silu_mul,
    sparse_linear_op,
    sparse_linear_q_op,
)

__all__ = ["CLUSTERS", "DTYPES", "KEEP_MAX", "MAX_SPLITS", "Q_ROWS", "ROWS", "SOURCE", "STORAGE", "THREADS", "TILES",
           "Fused", "LaunchSpec", "Planned", "bytes_moved", "cache_dir", "check_versions", "compile_ptx",
           "dequantized", "device_arch", "driver_version", "function", "fusable", "kernel_layout", "launch",
           "launch_spec", "mask_op", "mask_spec", "nvrtc_version", "pick_tiling", "preload", "quantized", "reference",
           "sm_count", "sparse_linear", "sparse_linear_op", "sparse_linear_q_op", "supports", "use_kernel",
           "as_weight_format",
           "LIST_ROWS", "LIST_TUNE", "PRODUCER_TUNE", "PRODUCERS", "SPLITS", "compact", "list_reference", "list_spec",
           "producer_spec", "rms_norm", "silu_mul"]
