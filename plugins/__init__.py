"""CUDA kernel sources (compiled at run time by `wisparse_export.kernels` through NVRTC) and the TensorRT plugin."""

from importlib import resources


def source(name: str) -> str:
    """The text of one kernel source shipped in this package."""
    return resources.files(__name__).joinpath(name).read_text()
