"""Weight reads as asynchronous copies into shared memory: does taking the bytes in flight out of registers close
the gap between today's reads (sdread) and the dependent-read floor (dread)?

probe_access.py found the reads stream faster with more blocks a SM (~3.4), and probe_grid.py that today's kernel
cannot have them: the registers that hold its loads in flight run out first. `floor_kernels.cu`
`wsp_floor_sdasync` reads exactly sdread's pieces of the same kept rows on the same grid, but through `cp.async`
into a ring of WSP_D 16-byte slots a thread in dynamic shared memory, so a block's bytes in flight are set by
shared memory (up to 227 KB a SM) instead of registers. Per cell, in one run (medians of `--reps` graph-replay
medians, weights rotated over copies larger than L2): torch.matmul bf16 on the dense shape, today's kernel, dread,
sdread (both also without the L2 prefetch hint, as build v5's weight loads), and sdasync over ring depths on
today's grid and on twice its blocks.

    python benchmarks/probe_async.py --json OUT.json [--reps 3] [--sparsities 0.5 0.75]
"""

from __future__ import annotations

import time
from functools import partial

import torch
from bench_floor import (
    dense_equal,
    floor_spec,
    probe_parser,
    probe_start,
    read_us,
    save_rows,
    sdread_tables,
    sdread_us,
    today_call,
)
from bench_fused import _time
from bench_kernels import ceilings
from probe_access import CELLS, load_cell

from wisparse_export import kernels

NOPF = {"WSP_L2PF": 0}
DEPTHS = (4, 8, 16, 32)  # 16-byte copies in flight a thread (today's kernel: 8 loads, two batches of 4)


def async_us(case, wts: list[torch.Tensor], in_f: int, splits: list[int], elem: int, tile: int, cluster: int,
             depth: int, arch: int, reps: int) -> float:
    """wsp_floor_sdasync on `tile` x `cluster` (today's grid, or another), ring depth `depth`."""
    idx, _, count = case.lst
    starts, tiles = sdread_tables(idx, count.tolist(), splits, in_f, tile, cluster, elem)
    dev = wts[0].device
    starts, tiles, idx = starts.to(dev), tiles.to(dev), idx.contiguous()
    grid = len(tiles) * cluster
    spec = floor_spec("wsp_floor_sdasync", grid, (in_f, sum(splits) * elem, cluster), arch, seg=tile * elem,
                      defines={"WSP_D": depth}, shared_mem=depth * kernels.THREADS * 16)
    y = torch.zeros(grid, dtype=torch.int32, device=dev)

    def call(w: torch.Tensor) -> None:
        kernels.launch(spec, [idx.data_ptr(), starts.data_ptr(), tiles.data_ptr(), w.data_ptr()], y.data_ptr(),
                       torch.cuda.current_stream().cuda_stream)

    return _time([partial(call, w) for w in wts], len(wts), reps)


def probe_cell(name: str, s: float, read_bps: float, reps: int) -> list[dict]:
    in_f, splits, weights, elem, case, _, wts, scale, kept, sms, arch = load_cell(name, s)
    out, n = sum(splits), len(wts)
    spec = kernels.launch_spec(torch.bfloat16, in_f, splits, 1, weights=weights, sms=sms, arch=arch)
    base = {"cell": name, "sparsity": s, "bound_us": kept / read_bps * 1e6, "tile": spec.tile, "C": spec.cluster,
            "bf16_us": dense_equal(out, in_f, reps)["us"],
            "today_us": _time([lambda m=m: today_call(case.v, m, scale, case.tau, splits) for m in wts], n, reps),
            "dread_us": read_us(wts, kept, sms, arch, reps, dep=True)[0],
            "sdread_us": sdread_us(case, spec, wts, in_f, splits, elem, arch, reps),
            # the same two reads without the L2 prefetch hint (build v5's weight loads)
            "dread_nopf_us": read_us(wts, kept, sms, arch, reps, dep=True, defines=NOPF)[0],
            "sdread_nopf_us": sdread_us(case, spec, wts, in_f, splits, elem, arch, reps, defines=NOPF)}
    rows = []
    for c in sorted({spec.cluster, min(8, 2 * spec.cluster)}):
        for d in DEPTHS:
            us = async_us(case, wts, in_f, splits, elem, spec.tile, c, d, arch, reps)
            grid = sum(splits) // spec.tile * c
            rows.append({**base, "variant": f"{spec.tile}x{c} D{d}", "grid": grid, "us": us})
    del wts
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = probe_parser(__doc__)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5])
    ap.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS))
    args, t0 = probe_start(ap, "probe_async.py")
    _, read = ceilings()
    rows = [r for name in args.cells for s in args.sparsities for r in probe_cell(name, s, read, args.reps)]
    save_rows(args.json, rows, t0, read_tbps=read / 1e12)
    last = None
    for r in rows:
        if (r["cell"], r["sparsity"]) != last:
            last = (r["cell"], r["sparsity"])
            print(f"{r['cell']} s={r['sparsity']}: bound {r['bound_us']:.2f}, torch.matmul bf16 {r['bf16_us']:.2f}, "
                  f"today {r['today_us']:.2f} ({r['bf16_us'] / r['today_us']:.2f}x), dread {r['dread_us']:.2f}, "
                  f"sdread {r['sdread_us']:.2f} ({r['tile']}x{r['C']}) us; without the L2 prefetch hint dread "
                  f"{r['dread_nopf_us']:.2f}, sdread {r['sdread_nopf_us']:.2f}")
        print(f"  sdasync {r['variant']:<12} grid {r['grid']:>4}: {r['us']:6.2f} us "
              f"[{100 * r['bound_us'] / r['us']:3.0f}% of bound; sdread - this {r['sdread_us'] - r['us']:+.2f}]")
    print(f"plain read {read / 1e12:.2f} TB/s; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
