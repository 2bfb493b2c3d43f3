"""A tensor-core prototype of the FP8 sparse GEMV (`floor_kernels.cu` `wsp_floor_mma`) beside today's kernel.

probe_grid.py's `fp8alu` and `arith` sets say today's kernel pays for its instructions per weight (a conversion
and an FMA each); `wsp_floor_mma` does the multiply-adds on tensor cores (mma.sync m16n8k16, f16 x f16 -> f32),
one instruction per 256 weights of a warp. It takes the kept channels as a list (the fused path's input, no mask
in the kernel) and writes float32 partial sums per split (no cluster reduction): a probe of the arithmetic's
cost, not a product. Per FP8 8B MLP shape and sparsity, in one run (medians of `--reps` graph-replay medians,
weights rotated over copies larger than L2): torch.matmul bf16, today's kernel, the prototype on 1-8 blocks a
column tile, each prototype checked against float64 first (max |error| / max |y|).

    python benchmarks/probe_mma.py --json OUT.json [--sparsities 0.5 0.75] [--reps 3]
"""

from __future__ import annotations

import time
from functools import partial

import torch
from bench_floor import dense_equal, floor_spec, probe_parser, probe_start, save_rows, today_call
from bench_fused import _time, _weights, sparsity_case
from probe_access import starts_for, tiles_for

from wisparse_export import kernels

CELLS = {  # name: (in, splits, producer kind)
    "8B gate/up 4096->14336": (4096, [14336], "rmsnorm"),
    "8B down 14336->4096": (14336, [4096], "silu_mul"),
    "8B gate+up fused 4096->28672": (4096, [14336, 14336], "rmsnorm"),
}
TILE = 128  # columns a block (wsp_floor_mma: 8 lane groups x 16 bytes)


def mma_spec(grid: int, in_f: int, ldw: int, c: int, arch: int) -> kernels.LaunchSpec:
    return floor_spec("wsp_floor_mma", grid, (in_f, ldw, c), arch)


def reference(idx: torch.Tensor, vals: torch.Tensor, counts: list[int], splits: list[int], wq: torch.Tensor,
              scale: torch.Tensor) -> torch.Tensor:
    """float64 y: each projection's kept x times its kept rows of the dequantized weight."""
    out, off = [], 0
    for p, (n, sp) in enumerate(zip(counts, splits, strict=True)):
        rows = wq[idx[p, :n].long(), off:off + sp].double() * scale[off:off + sp].double()
        out.append(vals[p, :n].double() @ rows)
        off += sp
    return torch.cat(out)


def probe_cell(name: str, s: float, reps: int) -> list[dict]:
    in_f, splits, kind = CELLS[name]
    out = sum(splits)
    dev = torch.device("cuda")
    arch = kernels.device_arch(dev)
    case, counts, n = sparsity_case(in_f, splits, kind, s, 1, 1, 64)
    wts, scale = _weights(in_f, out, "fp8_e4m3", n)
    idx, vals = case.lst[0].contiguous(), case.lst[1][..., 0].contiguous()
    want = reference(idx, vals, counts, splits, wts[0], scale)
    ref_us = dense_equal(out, in_f, reps)["us"]
    today = _time([lambda m=m: today_call(case.v, m, scale, case.tau, splits) for m in wts], n, reps)
    rows = [{"cell": name, "sparsity": s, "path": "torch.matmul bf16", "us": ref_us},
            {"cell": name, "sparsity": s, "path": "today's kernel", "us": today}]
    tiles = tiles_for(splits, in_f, TILE, 1, "row").to(dev)
    for c in (1, 2, 4, 8):
        starts = starts_for(idx, counts, in_f, c, "list").to(dev)
        spec = mma_spec(len(tiles) * c, in_f, out, c, arch)
        y = torch.zeros(c, out, dtype=torch.float32, device=dev)

        def call(w: torch.Tensor, spec=spec, starts=starts, y=y) -> None:
            kernels.launch(spec, [idx.data_ptr(), vals.data_ptr(), starts.data_ptr(), tiles.data_ptr(), w.data_ptr(),
                                  scale.data_ptr()], y.data_ptr(), torch.cuda.current_stream().cuda_stream)

        call(wts[0])
        torch.cuda.synchronize()
        err = ((y.double().sum(0) - want).abs().max() / want.abs().max()).item()
        us = _time([partial(call, w) for w in wts], n, reps)
        rows.append({"cell": name, "sparsity": s, "path": f"mma prototype, {c} blocks a tile",
                     "grid": len(tiles) * c, "us": us, "rel_err": err})
    del wts
    torch.cuda.empty_cache()
    for r in rows:
        r["x_bf16"] = ref_us / r["us"]
    return rows


def main() -> None:
    ap = probe_parser(__doc__)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75])
    args, t0 = probe_start(ap, "probe_mma.py")
    rows = [r for name in CELLS for s in args.sparsities for r in probe_cell(name, s, args.reps)]
    save_rows(args.json, rows, t0)
    for r in rows:
        err = f"  err {r['rel_err']:.1e}" if "rel_err" in r else ""
        grid = f" grid {r['grid']:>4}" if "grid" in r else ""
        print(f"{r['cell']:<30} s={r['sparsity']:<5} {r['path']:<34}{grid:>10} {r['us']:7.2f} us "
              f"{r['x_bf16']:5.2f}x bf16{err}")
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
