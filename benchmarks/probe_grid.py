"""Today's kernel on grids of 448+ blocks with 4 resident blocks per SM (probe_access.py: the weight reads alone
stream fastest with ~3.4 blocks per SM, nearest the dependent-read floor; today's 1-byte builds run 224-256
blocks, and the sweep's 448-block tilings allowed only 3 blocks per SM, so a second wave).

Also FP8 builds with `WSP_FP8ALU=1` (integer dequantization, no conversion instruction), which must give the
chosen build's y bit for bit on the same tiling.

Per 8B MLP shape, weight format and sparsity, in one run (medians of `--reps` graph-replay medians, weights rotated
over copies larger than L2): torch.matmul bf16 (the faster layout), the chosen kernel, and each variant
`{tile}x{cluster}` and its macros (`--set grid`, `fp8alu`, `i8f16`, `i8mix`, `threads`, `l2`, `l2pf`, `depth`, `async`
or `arith`); every variant's y is checked against the chosen kernel's first.

    python benchmarks/probe_grid.py --json OUT.json [--set NAME] [--sparsities 0.5 0.75]
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from bench_floor import dense_equal, probe_parser, probe_start, save_rows
from bench_fused import _time, _weights
from bench_kernels import SHAPES, copies, run, thresholds

from wisparse_export import kernels, quant, scores

CELLS = ("8B gate/up 4096->14336", "8B down 14336->4096", "8B gate+up fused 4096->28672")
ALU = {"WSP_FP8ALU": 1}
T128 = {"WSP_THREADS": 128, "WSP_MINB": 4}
ONLY = {"WSP_FP8ALU": "fp8_e4m3", "WSP_I8F16": "int8", "WSP_I8MIX": "int8"}  # macros of one weight format only


def _m(u: int, npass: int, minb: int) -> dict[str, int]:
    return {"WSP_U": u, "WSP_NPASS": npass, "WSP_MINB": minb}


SETS = {  # set: shape: (tile, cluster, macros) beside the chosen build (tile None: the chosen tiling)
    "grid": {  # 448+ blocks, 4 resident a SM
        "8B gate/up 4096->14336": [(128, 4, _m(4, 1, 4)), (128, 4, _m(2, 1, 4)), (256, 8, _m(4, 1, 4)),
                                   (256, 8, _m(2, 1, 4)), (128, 4, _m(4, 1, 3)), (256, 4, _m(4, 1, 4)),
                                   (128, 2, _m(4, 1, 4))],
        "8B down 14336->4096": [(64, 8, _m(4, 1, 4)), (64, 8, _m(2, 1, 4)), (128, 8, _m(4, 1, 4)),
                                (64, 8, _m(4, 1, 3)), (32, 8, _m(4, 1, 4)), (128, 8, _m(2, 1, 4))],
        "8B gate+up fused 4096->28672": [(128, 2, _m(4, 1, 4)), (128, 2, _m(2, 1, 4)), (256, 4, _m(4, 1, 4)),
                                         (256, 4, _m(2, 1, 4)), (128, 2, _m(4, 1, 3)), (256, 2, _m(4, 1, 4))],
    },
    "fp8alu": {  # the integer FP8 dequantization, on the chosen and on wider tilings
        "8B gate/up 4096->14336": [(None, None, ALU), (256, 4, ALU), (256, 2, ALU), (128, 4, {**ALU, "WSP_MINB": 3}),
                                   (128, 4, {**ALU, "WSP_U": 2, "WSP_MINB": 4})],
        "8B down 14336->4096": [(None, None, ALU), (256, 8, ALU), (64, 8, ALU), (128, 4, ALU)],
        "8B gate+up fused 4096->28672": [(None, None, ALU), (256, 2, ALU), (128, 2, {**ALU, "WSP_MINB": 3}),
                                         (256, 4, ALU)],
    },
    "i8f16": {  # INT8 dequantized through f16 pairs (WSP_I8F16=1: the same y bit for bit), beside the chosen build
        name: [(None, None, {"WSP_I8F16": 1})]
        for name in CELLS
    },
    "i8mix": {  # INT8: 1-3 weights a word through the conversion pipe, the rest as today (the same y bit for bit)
        name: [(None, None, {"WSP_I8MIX": k}) for k in (1, 2, 3)]
        for name in CELLS
    },
    "threads": {  # blocks of 128 threads (WSP_THREADS=128, 4 resident a SM): the grid doubles, warps a SM do not
        "8B gate/up 4096->14336": [(128, 4, T128), (256, 8, T128), (128, 2, T128)],
        "8B down 14336->4096": [(64, 8, T128), (128, 8, T128), (32, 8, T128)],
        "8B gate+up fused 4096->28672": [(128, 2, T128), (256, 4, T128), (256, 2, T128)],
    },
    "l2": {  # L2 eviction priorities (WSP_L2HINT): 1 weights evict_first, 2 tau evict_last, 3 both; the same y
        name: [(None, None, {"WSP_L2HINT": h}) for h in (1, 2, 3)]
        for name in CELLS
    },
    "async": {  # the kept rows' pieces through cp.async into a ring of WSP_ASYNC slots a thread (shared memory)
        "8B gate/up 4096->14336": [(None, None, {"WSP_ASYNC": 8}), (None, None, {"WSP_ASYNC": 16}),
                                   (None, None, {"WSP_ASYNC": 16, "WSP_MINB": 2}),
                                   (128, 4, {"WSP_ASYNC": 8, "WSP_MINB": 4}),
                                   (128, 4, {"WSP_ASYNC": 12, "WSP_MINB": 3}), (256, 4, {"WSP_ASYNC": 16})],
        "8B down 14336->4096": [(None, None, {"WSP_ASYNC": 8}), (None, None, {"WSP_ASYNC": 16}),
                                (64, 8, {"WSP_ASYNC": 8, "WSP_MINB": 4}), (64, 8, {"WSP_ASYNC": 12, "WSP_MINB": 3})],
        "8B gate+up fused 4096->28672": [(None, None, {"WSP_ASYNC": 8}), (None, None, {"WSP_ASYNC": 16}),
                                         (128, 2, {"WSP_ASYNC": 8, "WSP_MINB": 4}),
                                         (128, 2, {"WSP_ASYNC": 12, "WSP_MINB": 3})],
    },
    "l2pf": {  # the weight loads' L2 prefetch (WSP_L2PF): 256 bytes (build v4's) or 128, beside none (v5); the same y
        name: [(None, None, {"WSP_L2PF": b}) for b in (256, 128)]
        for name in SHAPES  # every shape bench_kernels.py times (--shapes)
    },
    "depth": {  # loads a batch on the chosen tiling (v6's stream needs fewer registers: 5 fit 3 blocks a SM)
        name: [(None, None, {"WSP_U": 5}), (None, None, {"WSP_U": 3}), (None, None, {"WSP_U": 6, "WSP_MINB": 2})]
        for name in (*CELLS, "70B gate/up 8192->28672", "70B down 28672->8192")  # the 70B ones: --shapes
    },
    "arith": {  # the chosen tiling with less arithmetic a weight (WSP_FP8ALU 2 and 3: timing only, wrong y)
        name: [(None, None, ALU), (None, None, {"WSP_FP8ALU": 2}), (None, None, {"WSP_FP8ALU": 3})]
        for name in CELLS
    },
}


def probe(name: str, fmt: quant.WeightFormat | None, sparsities, reps: int, tries: list) -> list[dict]:
    """fmt None: bf16 weights, on the chosen tiling only (the sets' explicit tiles are 1-byte ones)."""
    in_f, splits = SHAPES[name]
    out = sum(splits)
    ref = dense_equal(out, in_f, reps)["us"]  # torch.matmul bf16, the faster layout
    elem, label_fmt = (2, "bf16") if fmt is None else (1, fmt.name)
    wqs, scale = _weights(in_f, out, None if fmt is None else fmt.name, copies(in_f * out * elem))
    x = torch.randn(1, in_f, device="cuda").to(torch.bfloat16)
    y = torch.empty(1, out, dtype=torch.bfloat16, device="cuda")
    chosen = kernels.launch_spec(torch.bfloat16, in_f, splits, 1, weights=fmt)
    specs = [("chosen", chosen)]
    for t, c, tune in tries:
        if fmt is None and t is not None:
            continue
        t, c = (chosen.tile, chosen.cluster) if t is None else (t, c)
        tune = {k: v for k, v in tune.items() if k not in ONLY or (fmt is not None and ONLY[k] == fmt.name)}
        label = f"{t}x{c}" + "".join(f" {k[4:].lower()}{v}" for k, v in sorted(tune.items()))
        spec = kernels.launch_spec(torch.bfloat16, in_f, splits, 1, tile=t, cluster=c, weights=fmt, tune=tune)
        ring = tune.get("WSP_ASYNC", 0) * tune.get("WSP_THREADS", spec.block[0]) * 16  # cp.async slots
        specs.append((label, replace(spec, block=(tune.get("WSP_THREADS", spec.block[0]), 1, 1), shared_mem=ring)))
    rows = []
    for sp in sparsities:
        tau = thresholds(sp, in_f, len(splits))
        keep = scores.keep(x, tau[0]).float().mean().item()
        n = min(len(wqs), copies(keep * in_f * out * elem))
        run(chosen, x, wqs[0], tau, y, scale=scale)
        want = y.clone()
        for label, spec in specs:
            y.fill_(float("nan"))
            run(spec, x, wqs[0], tau, y, scale=scale)
            if "fp8alu2" in label or "fp8alu3" in label:
                ok = None  # wrong y by design
            elif any(label.startswith(f"{chosen.tile}x{chosen.cluster} {m}")
                     for m in ("fp8alu1", "i8f16", "i8mix", "l2hint", "async", "l2pf")):
                ok = bool(torch.equal(y, want))  # same tiling: the same y, bit for bit
            else:
                ok = bool(torch.allclose(y.float(), want.float(), rtol=1e-2, atol=1e-2))
            us = _time([lambda m=m, v=spec, t=tau: run(v, x, m, t, y, scale=scale) for m in wqs[:n]], n, reps)
            rows.append({"shape": name, "format": label_fmt, "sparsity": sp, "variant": label, "kernel": spec.name,
                         "grid": spec.grid[0], "us": us, "bf16_us": ref, "x_bf16": ref / us, "matches": ok})
    del wqs
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = probe_parser(__doc__)
    ap.add_argument("--formats", nargs="+", choices=[*quant.FORMATS, "bf16"], default=["fp8_e4m3", "int8"])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75])
    ap.add_argument("--set", choices=list(SETS), default="grid")
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(CELLS),
                    help="shapes (default the three 8B MLP cells; the others only where the set names them: l2pf)")
    args, t0 = probe_start(ap, "probe_grid.py")
    shapes = [name for name in args.shapes if name in SETS[args.set]]
    rows = [r for f in args.formats for name in shapes for r in probe(name, quant.FORMATS.get(f), args.sparsities,
                                                                       args.reps, SETS[args.set][name])]
    save_rows(args.json, rows, t0)
    for r in rows:
        bad = {True: "", False: "  MISMATCH", None: "  (timing only)"}[r["matches"]]
        print(f"{r['format']:>9} {r['shape']:<30} s={r['sparsity']:<5} {r['variant']:<24} grid {r['grid']:>4} "
              f"{r['us']:7.2f} us  {r['x_bf16']:.2f}x bf16 ({r['bf16_us']:.1f}){bad}")
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
