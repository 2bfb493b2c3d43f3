"""CUDA kernel sources (compiled at run time by `wisparse_export.kernels` through NVRTC) and the TensorRT plugin."""
