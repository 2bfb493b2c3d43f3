"""Prove that a kernel-source change leaves shipped builds alone: PTX of `plugins/sparse_gemv.cu` at a git revision
and in the working tree, compiled with the same defines, must be byte for byte the same.

Every build launch_spec, mask_spec, producer_spec and list_spec can make (16-bit and 1-byte weights, rows, tiles,
loads, clusters, bias; sm_90, and sm_80 where no cluster is needed), none of the new macros set. CPU only (NVRTC);
the whole set takes ~10 minutes on one core, `--quick` a subset in ~1.

    python benchmarks/ptx_identity.py [--rev main] [--quick] [--strip .L2::256B] [--ref-define WSP_X=1]

`--ref-define` compiles the reference with a probed macro set: a change that ships a probe's code as the default
must then give every build the same PTX (`--rev 10341e3 --ref-define WSP_ADDR=1`: build v6).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from wisparse_export import kernels
from wisparse_export.kernels import build

SOURCE = Path(__file__).resolve().parents[1] / "plugins" / kernels.SOURCE


def gemv_builds(quick: bool) -> list[dict]:
    """Today's kernel (launch_spec): 16-bit and 1-byte weights, every tiling choice."""
    out = []
    for r in (1, 4) if quick else kernels.ROWS:
        for c in (1, 8) if quick else kernels.CLUSTERS:
            for tn, v in ((128, 8), (32, 1)) if quick else ((16, 8), (32, 8), (64, 8), (128, 8), (16, 1), (32, 1)):
                out += [{"WSP_R": r, "WSP_TN": tn, "WSP_V": v, "WSP_C": c, "WSP_BIAS": b} for b in (0, 1)]
            for wq in (1, 2):
                for tn, v in ((256, 16), (128, 8), (32, 1)) if quick else (
                        (256, 16), (128, 16), (64, 16), (32, 16), (16, 16), (128, 8), (64, 8), (32, 8), (16, 8),
                        (32, 1), (16, 1)):
                    if tn <= 128 or r <= 4:
                        out.append({"WSP_R": r, "WSP_TN": tn, "WSP_V": v, "WSP_C": c, "WSP_BIAS": 1, "WSP_WQ": wq})
    return out


def fused_builds() -> list[dict]:
    """The mask kernel, the producers and the Stream-K list GEMV (issue 15)."""
    out = [{"WSP_MASK": 1}]
    for r in kernels.LIST_ROWS:
        out += [{"WSP_R": r, "WSP_C": c, "WSP_PRODUCER": e} for e in (1, 2) for c in kernels.CLUSTERS]
        for tn, v, wq in ((128, 8, 0), (32, 1, 0), (256, 16, 1), (256, 16, 2), (128, 8, 2), (16, 1, 1)):
            wqs = {"WSP_WQ": wq} if wq else {}
            out += [{"WSP_R": r, "WSP_TN": tn, "WSP_V": v, "WSP_BIAS": b, "WSP_LIST": 1, **wqs} for b in (0, 1)]
    return out


def ptx(text: str, defines: dict, arch: int) -> bytes:
    opts = [f"--gpu-architecture=compute_{arch}", "--std=c++17", *(f"-D{k}={v}" for k, v in sorted(defines.items()))]
    return build._compile(text, kernels.SOURCE, opts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="main", help="the git revision whose kernel source is the reference")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--strip", default="", help="PTX text removed from both sides before comparing (a change that "
                    "only drops a cache hint, e.g. '.L2::256B', must leave every build otherwise the same)")
    ap.add_argument("--ref-define", action="append", default=[], metavar="KEY=V",
                    help="a macro set on the reference side only (repeatable)")
    args = ap.parse_args(argv)
    strip = args.strip.encode()
    ref = dict(item.split("=", 1) for item in args.ref_define)
    rel = SOURCE.relative_to(SOURCE.parents[1]).as_posix()
    old = subprocess.run(["git", "show", f"{args.rev}:{rel}"], cwd=SOURCE.parents[1], check=True,
                         capture_output=True, text=True).stdout
    new = SOURCE.read_text()
    checked = differ = changed = 0
    for base in gemv_builds(args.quick) + fused_builds():
        for f16 in (0, 1):
            d = {"WSP_NAME": "k", "WSP_F16": f16, **base}
            for arch in (90, 80) if d.get("WSP_C", 1) == 1 and d.get("WSP_WQ") != 1 else (90,):
                checked += 1
                a, b = ptx(old, {**d, **ref}, arch), ptx(new, d, arch)
                changed += a != b
                if strip and a != b:
                    a, b = a.replace(strip, b""), b.replace(strip, b"")
                if a != b:
                    differ += 1
                    print(f"DIFFERS sm_{arch} {d}")
    but = f" ({changed} differ before removing {args.strip!r} from both)" if strip else ""
    with_ref = f" (with {' '.join(args.ref_define)})" if ref else ""
    print(f"{checked} builds compiled from {args.rev}{with_ref} and the working tree: {differ} differ{but}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
