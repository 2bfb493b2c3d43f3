"""NVRTC: compile `plugins/sparse_gemv.cu` for one configuration to PTX (or a cubin), cached on disk by content."""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import WisparseError

SOURCE = "sparse_gemv.cu"


def _sources_dir() -> Path:
    try:
        return Path(str(resources.files("wisparse_export.plugins")))
    except ModuleNotFoundError:  # running from a source tree that is not installed
        return Path(__file__).resolve().parents[2] / "plugins"


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


def supported_archs() -> list[int]:
    """The compute capabilities (as 80, 90, ...) this NVRTC can target."""
    _, archs = _nvrtc().nvrtcGetSupportedArchs()
    return [int(a) for a in archs]


def _check_nvrtc(err, what: str, prog=None) -> None:
    nvrtc = _nvrtc()

    if err == nvrtc.nvrtcResult.NVRTC_SUCCESS:
        return
    log = _log(prog).strip() if prog is not None else ""
    raise RuntimeError(f"{what} failed ({err.name}){': ' + log if log else ''}")


def _log(prog) -> str:
    nvrtc = _nvrtc()
    _, size = nvrtc.nvrtcGetProgramLogSize(prog)
    buf = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, buf)
    return buf.decode(errors="replace")


_build_lock = threading.Lock()
_ptx_memo: dict[tuple[Path, str], str] = {}


def compile_ptx(source: str, defines: dict[str, Any], arch: int = 90, cubin: bool = False,
                extra: Sequence[str] = ()) -> Any:
    """PTX (or, with cubin=True, a cubin and NVRTC's log) for one configuration, cached by content.

    The cache key holds the source text, the options, the target and NVRTC's version, so a changed kernel, a
    different GPU or another compiler never reuses a stale file.
    """
    text = (_sources_dir() / source).read_text()
    opts = [f"--gpu-architecture={'sm' if cubin else 'compute'}_{arch}", "--std=c++17", *extra,
            *(f"-D{k}={v}" for k, v in sorted(defines.items()))]
    key = hashlib.sha256("\0".join([text, *opts, f"nvrtc{nvrtc_version()}"]).encode()).hexdigest()[:20]
    if cubin:
        with _build_lock:
            return _compile(text, source, opts, cubin=True)
    path = cache_dir() / f"{defines.get('WSP_NAME', 'kernel')}-sm{arch}-{key}.ptx"
    if (path, key) not in _ptx_memo:
        if path.is_file():
            _ptx_memo[path, key] = path.read_text()
        else:
            with _build_lock:
                _ptx_memo[path, key] = _store(path, _compile(text, source, opts).rstrip(b"\0 ").decode())
    return _ptx_memo[path, key]


def _compile(text: str, source: str, opts: list[str], cubin: bool = False) -> Any:
    """One NVRTC run: the PTX bytes, or (cubin bytes, log)."""
    nvrtc = _nvrtc()
    err, prog = nvrtc.nvrtcCreateProgram(text.encode(), source.encode(), 0, [], [])
    _check_nvrtc(err, "nvrtcCreateProgram")
    try:
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        _check_nvrtc(err, f"compiling {source} with {' '.join(opts)}", prog)
        get_size, get = (nvrtc.nvrtcGetCUBINSize, nvrtc.nvrtcGetCUBIN) if cubin else (nvrtc.nvrtcGetPTXSize,
                                                                                       nvrtc.nvrtcGetPTX)
        err, size = get_size(prog)
        _check_nvrtc(err, get_size.__name__)
        buf = b" " * size
        (err,) = get(prog, buf)
        _check_nvrtc(err, get.__name__)
        return (buf, _log(prog)) if cubin else buf
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _store(path: Path, ptx: str) -> str:
    """Write the PTX to the cache atomically; an unwritable cache only costs a recompile."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(ptx)
        os.replace(tmp, path)
    except OSError:
        pass
    return ptx
