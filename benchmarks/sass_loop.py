"""Instructions a 16-byte weight load in the sparse GEMV's stream loop, from the machine code of a build (CPU only).

For each shape and weight format: launch_spec's PTX, assembled for sm_90 by `ptxas`, disassembled by `cuobjdump
-sass`; the innermost loop holding the 128-bit weight loads is the one a backward branch closes around the fewest
instructions. Printed: its instructions, its weight loads, their ratio and the most frequent opcodes (the arithmetic
of 16 FP8 weights is 40: 8 e4m3-pair conversions, 16 halves to float32, 16 FMAs; the rest is addressing, tests,
copies). Probe 11 (docs/BENCHMARKS.md, build v6) read its figures from this.

`ptxas` comes with the CUDA toolkit or the `nvidia-cuda-nvcc` wheel, `cuobjdump` and `nvdisasm` with the
`nvidia-cuda-cuobjdump` and `nvidia-cuda-nvdisasm` wheels; give their folders in PATH.

    python benchmarks/sass_loop.py [--formats bf16 fp8_e4m3 int8] [--tune WSP_U=5] [--rev 10341e3]

`--rev` compiles the kernel source of a git revision with the same defines (10341e3: build v5's stream loop).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_kernels import SHAPES
from ptx_identity import SOURCE, ptx

from wisparse_export import kernels, quant
from wisparse_export.kernels import geometry

INS = re.compile(r"/\*([0-9a-f]{4,})\*/\s+((?:@!?U?P\w+\s+)?[A-Z0-9_.]+[^;]*);")
WEIGHT_LOAD = re.compile(r"LDG\.E(?:\.NA)?\.128\.CONSTANT")


def stream_loop(sass: str) -> tuple[int, int, collections.Counter]:
    """(instructions, weight loads, opcode counts) of the shortest loop that holds a 128-bit weight load."""
    ins = [(int(m.group(1), 16), m.group(2)) for m in INS.finditer(sass)]
    loads = [a for a, text in ins if WEIGHT_LOAD.search(text)]
    best = None
    for a, text in ins:
        m = re.search(r"\bBRA (?:!?U?P\d, )?`?\(?0x([0-9a-f]+)", text)
        target = int(m.group(1), 16) if m else None
        if target is not None and target < a and any(target <= x <= a for x in loads):
            if best is None or a - target < best[1] - best[0]:
                best = (target, a)
    if best is None:
        raise ValueError("no loop around a 128-bit weight load in this code")
    body = [text for a, text in ins if best[0] <= a <= best[1]]
    ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for t in body)
    return len(body), sum(1 for t in body if WEIGHT_LOAD.search(t)), ops


def sass_of(ptx: str) -> str:
    for tool in ("ptxas", "cuobjdump", "nvdisasm"):
        if shutil.which(tool) is None:
            sys.exit(f"sass_loop.py: {tool} not found in PATH (see the docstring for where it comes from)")
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        src.write_text(ptx)
        subprocess.run(["ptxas", "-arch=sm_90", str(src), "-o", str(cubin)], check=True)
        return subprocess.run(["cuobjdump", "-sass", str(cubin)], check=True, capture_output=True, text=True).stdout


def build_ptx(fmt: str, in_f: int, splits: list[int], tune: dict[str, int], rev: str | None) -> tuple[str, str]:
    """(kernel name, PTX) of the chosen one-row build: from the working tree, or from the source at `rev`."""
    weights = None if fmt == "bf16" else fmt
    spec = kernels.launch_spec("bf16", in_f, splits, 1, weights=weights, arch=90, tune=tune or None)
    if rev is None:
        return spec.name, spec.ptx
    old = subprocess.run(["git", "show", f"{rev}:{SOURCE.relative_to(SOURCE.parents[1]).as_posix()}"],
                         cwd=SOURCE.parents[1], check=True, capture_output=True, text=True).stdout
    defines = {"WSP_NAME": spec.name, "WSP_F16": 0, "WSP_R": 1, "WSP_TN": spec.tile, "WSP_V": spec.vec,
               "WSP_C": spec.cluster, "WSP_BIAS": 0, **tune}
    if weights is not None:
        defines["WSP_WQ"] = geometry.WQ[weights]
    return f"{spec.name}@{rev}", ptx(old, defines, 90).rstrip(b"\0 ").decode()


def tune_item(text: str) -> tuple[str, int]:
    key, _, value = text.partition("=")
    if not key.startswith("WSP_") or not value.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"--tune takes WSP_NAME=integer, not {text!r}")
    return key, int(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", nargs="+", choices=["bf16", *quant.FORMATS], default=["bf16", "fp8_e4m3", "int8"])
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    ap.add_argument("--tune", type=tune_item, nargs="*", default=[], help="macros of a probed build, WSP_X=1")
    ap.add_argument("--rev", help="compile the kernel source of this git revision instead of the working tree's")
    args = ap.parse_args()
    for fmt in args.formats:
        for name in args.shapes:
            in_f, splits = SHAPES[name]
            label, text = build_ptx(fmt, in_f, splits, dict(args.tune), args.rev)
            n, loads, ops = stream_loop(sass_of(text))
            common = " ".join(f"{k} {v}" for k, v in ops.most_common(8))
            print(f"{fmt:>9} {name:<30} {label:<52} {n:4d} instructions, {loads} loads: {n / loads:5.1f} a load"
                  f"  ({common})")


if __name__ == "__main__":
    main()
