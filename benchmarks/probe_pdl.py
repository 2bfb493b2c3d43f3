"""Programmatic dependent launch (PDL) for today's kernel: does starting a call before the previous kernel ends
gain, back to back and behind a kernel that knows nothing of PDL (what a decode step has before every linear)?

Builds `WSP_PDL=1/2/3` of `plugins/sparse_gemv.cu` (wait for the previous kernel before x, tau and y; let the next
one launch after this block's weight stream, at this block's start, or only at exit), launched with CUDA's
programmatic-stream-serialization attribute (`kernels.launch(..., pdl=True)`). Per 8B MLP cell, weight format and
sparsity, in one run (medians of `--reps` graph-replay medians, weights rotated over copies larger than L2):
  back to back   torch.matmul bf16 (the faster layout; the issues' reference), the chosen build, each PDL build;
                 every PDL build's y must equal the chosen build's bit for bit;
  behind a producer   each call preceded by one elementwise torch kernel that writes x (as RMSNorm or SiLU * up
                 do in a model): the pair's time minus that kernel's alone, for torch.matmul (natural layout),
                 the chosen build and the PDL builds; a gain that shows only back to back would not carry to a model.

    python benchmarks/probe_pdl.py --json OUT.json [--formats fp8_e4m3 int8 bf16] [--sparsities 0.5 0.75]
"""

from __future__ import annotations

import time

import torch
from bench_floor import dense_equal, probe_parser, probe_start, save_rows
from bench_fused import _time, _weights
from bench_kernels import SHAPES, copies, thresholds

from wisparse_export import kernels

CELLS = ("8B gate/up 4096->14336", "8B down 14336->4096", "8B gate+up fused 4096->28672")
MODES = (1, 2, 3)
DTYPE = torch.bfloat16


def launch(spec, x, w, tau, y, scale, pdl: bool) -> None:
    ptrs = [x.data_ptr(), w.data_ptr(), tau.data_ptr()] + ([] if scale is None else [scale.data_ptr()])
    kernels.launch(spec, ptrs, y.data_ptr(), torch.cuda.current_stream().cuda_stream, pdl=pdl)


def builds(in_f: int, splits: list[int], weights: str | None) -> dict[str, tuple]:
    """label: (spec, launched with PDL) for the chosen build and each WSP_PDL build on the same tiling."""
    chosen = kernels.launch_spec(DTYPE, in_f, splits, 1, weights=weights)
    out = {"chosen": (chosen, False)}
    for m in MODES:
        spec = kernels.launch_spec(DTYPE, in_f, splits, 1, tile=chosen.tile, cluster=chosen.cluster,
                                   weights=weights, tune={"WSP_PDL": m})
        out[f"pdl{m}"] = (spec, True)
    return out


def behind(producer, calls: list, n: int, reps: int, alone: float) -> float:
    """µs a call adds behind the producer: the pair's time minus the producer's alone."""
    pairs = [lambda c=c: (producer(), c()) for c in calls]
    return _time(pairs, n, reps) - alone


def probe(name: str, weights: str | None, sparsities, reps: int) -> list[dict]:
    in_f, splits = SHAPES[name]
    out = sum(splits)
    ref = dense_equal(out, in_f, reps)
    keep = 1.0 - max(sparsities)  # enough copies that the fewest kept bytes still rotate through 3x the L2
    wts, scale = _weights(in_f, out, weights, copies(keep * in_f * out * (1 if weights else 2)))
    dense = [torch.randn(out, in_f, device="cuda").to(DTYPE) for _ in range(copies(in_f * out * 2))]
    src = torch.randn(1, in_f, device="cuda").to(DTYPE)
    x, y = torch.empty_like(src), torch.empty(1, out, dtype=DTYPE, device="cuda")
    producer = lambda: torch.mul(src, 1.0, out=x)  # noqa: E731  one foreign elementwise kernel writing x
    producer()
    alone = _time([producer], 1, reps)
    mm_behind = behind(producer, [lambda m=m: torch.matmul(x, m.t()) for m in dense], len(dense), reps, alone)
    variants = builds(in_f, splits, weights)
    rows = []
    for sp in sparsities:
        tau = thresholds(sp, in_f, len(splits))
        launch(variants["chosen"][0], x, wts[0], tau, y, scale, False)
        want = y.clone()
        for label, (spec, pdl) in variants.items():
            y.fill_(float("nan"))
            launch(spec, x, wts[0], tau, y, scale, pdl)
            same = bool(torch.equal(y, want))
            calls = [lambda m=m, s=spec, p=pdl, t=tau: launch(s, x, m, t, y, scale, p) for m in wts]
            us = _time(calls, len(wts), reps)
            ctx = behind(producer, calls, len(wts), reps, alone)
            rows.append({"shape": name, "weights": weights or "bf16", "sparsity": sp, "variant": label,
                         "kernel": spec.name, "us": us, "bf16_us": ref["us"], "x_bf16": ref["us"] / us,
                         "behind_us": ctx, "bf16_behind_us": mm_behind, "x_bf16_behind": mm_behind / ctx,
                         "producer_us": alone, "same_y": same})
    del wts, dense
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = probe_parser(__doc__)
    ap.add_argument("--formats", nargs="+", default=["fp8_e4m3", "int8", "bf16"])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75])
    ap.add_argument("--cells", nargs="+", default=list(CELLS))
    args, t0 = probe_start(ap, "probe_pdl.py")
    rows = [r for f in args.formats for name in args.cells
            for r in probe(name, None if f == "bf16" else f, args.sparsities, args.reps)]
    save_rows(args.json, rows, t0)
    print("back to back: us, x over bf16 torch.matmul | behind a producer: us added, x over matmul behind it")
    for r in rows:
        bad = "" if r["same_y"] else "  MISMATCH"
        print(f"{r['weights']:>8} {r['shape']:<30} s={r['sparsity']:<5} {r['variant']:<7} {r['us']:7.2f} us "
              f"{r['x_bf16']:.2f}x ({r['bf16_us']:.1f}) | {r['behind_us']:7.2f} us {r['x_bf16_behind']:.2f}x "
              f"({r['bf16_behind_us']:.1f}; producer {r['producer_us']:.2f}){bad}")
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
