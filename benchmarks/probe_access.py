"""Where today's kernel's weight reads lose time against a plain dependent read (bench_floor's sdread vs dread).

`floor_kernels.cu` `wsp_floor_sdread` reads only weight bytes (no x, no mask, no multiply-add) on a grid of column
tiles x split blocks. This script runs it over the knobs a kernel could change, on the same kept bytes, and prints
each beside the dependent read `dread` (the least any sparse GEMV of these bytes can take) and the bound:
  layout   row: W as today, [in, out] row-major (a kept channel is one contiguous row, each block reads a
           `seg`-byte piece of it); tiled: W stored tile-major, [tiles, in, seg] (a block's pieces of consecutive
           channels are adjacent, so its kept rows lie close together in DRAM)
  rows     rand: the kept channels of a real mask (bench_fused's case); even: every 1/keep-th channel
  split    how C blocks share a tile: range (today: channel ranges, binomial shares), list (equal list shares)
  C, seg, U  blocks per tile, bytes per row piece, 16-byte loads in flight per thread and batch
  read     ld: 16-byte loads (sdread); bulk: Hopper's bulk copies of whole pieces into U stages of 8 KB of shared
           memory (`wsp_floor_sdbulk`, sm_90); every variant's per-block fold must equal the first read of the same
           pieces (`matches` in the JSON; the table flags any that differs)
Medians of `--reps` graph-replay medians, weights rotated over copies larger than L2.

    python benchmarks/probe_access.py --json OUT.json [--reps 3] [--cells ...] [--clusters 4 8 16] [--segs 128 256]
        [--grid layout=row rows=rand split=range,list U=4]   (any GRID knob, comma-separated values)
C above 16 and segments of 1-4 KB (whole 1-byte down_proj rows: --segs 4096 --clusters 264) are reads only: no
kernel of ours launches them; they measure what a block reading longer pieces of each kept row would read at.
"""

from __future__ import annotations

import argparse
import itertools
import time
from functools import partial
from typing import NamedTuple

import torch
from bench_floor import floor_spec, probe_parser, probe_start, range_starts, read_us, save_rows
from bench_fused import _time, _weights, sparsity_case
from bench_kernels import ceilings

from wisparse_export import kernels

CELLS = {  # name: (in, splits, producer kind, weights)
    "8B gate+up bf16": (4096, [14336, 14336], "rmsnorm", None),
    "8B down bf16": (14336, [4096], "silu_mul", None),
    "8B gate/up fp8": (4096, [14336], "rmsnorm", "fp8_e4m3"),
    "8B gate+up fp8": (4096, [14336, 14336], "rmsnorm", "fp8_e4m3"),
    "8B down fp8": (14336, [4096], "silu_mul", "fp8_e4m3"),
}


def even_idx(in_f: int, counts: list[int], device) -> torch.Tensor:
    """Kept channels spread evenly: count of them, every in/count-th channel."""
    idx = torch.zeros(len(counts), in_f, dtype=torch.int32, device=device)
    for p, n in enumerate(counts):
        idx[p, :n] = (torch.arange(n, device=device) * in_f // n).to(torch.int32)
    return idx


def starts_for(idx: torch.Tensor, counts: list[int], in_f: int, c: int, split: str) -> torch.Tensor:
    """[P, C + 1] list positions each block of a tile starts at (range: today's channel ranges; list: equal)."""
    if split == "range":
        return range_starts(idx, counts, in_f, c)
    return torch.tensor([[r * n // c for r in range(c + 1)] for n in counts], dtype=torch.int32)


def tiles_for(splits: list[int], in_f: int, seg: int, elem: int, layout: str) -> torch.Tensor:
    """[T, 2]: (projection, byte offset of tile t's piece of channel 0) in either layout."""
    tiles, off, tn = [], 0, seg // elem
    for p, sp in enumerate(splits):
        for t in range(sp // tn):
            g = (off + t * tn) // tn  # tile number over all projections
            tiles.append((p, g * in_f * seg if layout == "tiled" else (off + t * tn) * elem))
        off += sp
    return torch.tensor(tiles, dtype=torch.int32)


def variant_us(wts, idx, counts, in_f, splits, elem, arch, reps, layout, split, c, seg, u, rd="ld"
               ) -> tuple[float, torch.Tensor]:
    """Median µs of the reads alone, and the blocks' folds of the first weight copy (the same bytes: the same folds
    whichever way they are read)."""
    dev = wts[0].device
    ldw = seg if layout == "tiled" else sum(splits) * elem
    starts = starts_for(idx, counts, in_f, c, split).to(dev)
    tiles = tiles_for(splits, in_f, seg, elem, layout).to(dev)
    grid = len(tiles) * c
    bulk = rd == "bulk"  # U stages of 8 KB in dynamic shared memory
    spec = floor_spec(READS[rd], grid, (in_f, ldw, c), arch, seg=seg, defines={"WSP_BD" if bulk else "WSP_U": u},
                      shared_mem=u * 8192 if bulk else 0)
    y = torch.zeros(grid, dtype=torch.int32, device=dev)

    def call(w: torch.Tensor) -> None:
        kernels.launch(spec, [idx.data_ptr(), starts.data_ptr(), tiles.data_ptr(), w.data_ptr()], y.data_ptr(),
                       torch.cuda.current_stream().cuda_stream)

    call(wts[0])
    fold = y.clone()
    return _time([partial(call, w) for w in wts], len(wts), reps), fold


class Cell(NamedTuple):
    """A cell at one sparsity, on the GPU: a real mask's case, the weight copies its kept bytes need (rotated over
    more than L2), those bytes, and the GPU's SM count and architecture."""

    in_f: int
    splits: list[int]
    weights: str | None
    elem: int
    case: object
    counts: list[int]
    wts: list[torch.Tensor]
    scale: torch.Tensor | None
    kept: int
    sms: int
    arch: int


def load_cell(name: str, s: float) -> Cell:
    in_f, splits, kind, weights = CELLS[name]
    elem, dev = 1 if weights else 2, torch.device("cuda")
    case, counts, n = sparsity_case(in_f, splits, kind, s, 1, elem, 64)
    wts, scale = _weights(in_f, sum(splits), weights, n)
    kept = sum(c * sp for c, sp in zip(counts, splits, strict=True)) * elem
    return Cell(in_f, splits, weights, elem, case, counts, wts, scale, kept, kernels.sm_count(dev),
                kernels.device_arch(dev))


GRID = {"layout": ("row", "tiled"), "rows": ("rand", "even"), "split": ("range", "list"), "C": (1, 2, 4, 8),
        "seg": (256, 512), "U": (4, 8), "read": ("ld",)}  # the knobs swept, each overridable from the command line
READS = {"ld": "wsp_floor_sdread", "bulk": "wsp_floor_sdbulk"}  # 16-byte loads, or bulk copies (sm_90, U = stages)
CLUSTERS = (1, 2, 4, 8, 16, 32, 64, 128, 224, 256, 264, 448)  # C: up to a whole grid on one tile
SEGS = (128, 256, 512, 1024, 2048, 4096)  # 16 bytes a thread: up to one 4 KB row piece a block


def grid_item(text: str) -> tuple[str, tuple]:
    """KEY=V,V,... for --grid: one of GRID's knobs and values it can take; a one-line error otherwise."""
    key, _, vals = text.partition("=")
    if key not in GRID or not vals:
        raise argparse.ArgumentTypeError(f"expected KEY=V,V with KEY one of {', '.join(GRID)}: {text!r}")
    kind = type(GRID[key][0])
    try:
        values = tuple(kind(v) for v in vals.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{key}: {e}") from None
    allowed = {"C": CLUSTERS, "seg": SEGS, "U": (1, 2, 4, 8, 16), "read": tuple(READS)}.get(key, GRID[key])
    if bad := [v for v in values if v not in allowed]:
        raise argparse.ArgumentTypeError(f"{key}: {bad} not in {allowed}")
    return key, values


def probe_cell(name: str, read_bps: float, reps: int, s: float = 0.5, grid: dict | None = None) -> list[dict]:
    in_f, splits, _, elem, case, counts, wts, _, kept, sms, arch = load_cell(name, s)
    dev = wts[0].device
    bound = kept / read_bps * 1e6
    dread = read_us(wts, kept, sms, arch, reps, dep=True)[0]
    idx_rand = case.lst[0].contiguous()
    idx_even = even_idx(in_f, counts, dev)
    rows, folds = [], {}
    for layout, rws, split, c, seg, u, rd in itertools.product(*({**GRID, **(grid or {})}).values()):
        if c == 1 and split == "list":
            continue  # one block a tile: both splits are the same
        if sum(splits) * elem % seg:
            continue
        idx = idx_rand if rws == "rand" else idx_even
        us, fold = variant_us(wts, idx, counts, in_f, splits, elem, arch, reps, layout, split, c, seg, u, rd)
        key = (layout, rws, split, c, seg)
        folds.setdefault(key, fold)  # the first read of these pieces; every other must fold the same
        rows.append({"cell": name, "sparsity": s, "layout": layout, "rows": rws, "split": split, "C": c, "seg": seg,
                     "U": u, "read": rd, "matches": bool(torch.equal(fold, folds[key])), "us": us,
                     "pct": 100 * bound / us, "dread_us": dread, "bound_us": bound,
                     "grid": (sum(splits) * elem // seg) * c})
    del wts
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = probe_parser(__doc__)
    ap.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS))
    ap.add_argument("--clusters", type=int, nargs="+", choices=CLUSTERS, metavar="C", help="blocks a tile (default "
                    "1 2 4 8; above 8 a grid of reads only here: no kernel of ours launches a cluster above 8)")
    ap.add_argument("--segs", type=int, nargs="+", choices=SEGS, help="bytes of a row a block reads (default 256 512)")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5])
    ap.add_argument("--grid", nargs="+", default=[], type=grid_item, metavar="KEY=V,V",
                    help=f"override any knob of the sweep ({', '.join(GRID)})")
    args, t0 = probe_start(ap, "probe_access.py")
    _, read = ceilings()
    grid = dict(args.grid) | {k: tuple(v) for k, v in (("C", args.clusters), ("seg", args.segs)) if v}
    rows = [r for name in args.cells for s in args.sparsities for r in probe_cell(name, read, args.reps, s, grid)]
    save_rows(args.json, rows, t0, read_tbps=read / 1e12)
    for name, s in itertools.product(args.cells, args.sparsities):
        mine = sorted((r for r in rows if r["cell"] == name and r["sparsity"] == s), key=lambda r: r["us"])
        r0 = mine[0]
        print(f"{name} s={s}: bound {r0['bound_us']:.1f} us, dread {r0['dread_us']:.1f} us "
              f"[{100 * r0['bound_us'] / r0['dread_us']:.0f}%]")
        for r in mine[:12] + [r for r in mine[12:] if r["layout"] == "row" and r["rows"] == "rand"
                              and r["split"] == "range"]:
            print(f"  {r['read']:>4} {r['layout']:>5} {r['rows']:>4} {r['split']:>5} C{r['C']} seg{r['seg']:<4} "
                  f"U{r['U']} grid {r['grid']:>4}: {r['us']:6.2f} us [{r['pct']:3.0f}]"
                  + ("" if r["matches"] is not False else "  FOLD DIFFERS from the 16-byte loads'"))
    print(f"plain read {read / 1e12:.2f} TB/s; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
