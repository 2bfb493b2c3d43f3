"""Which of issue 15's bars this GPU can reach at all: today's kernel beside the least any sparse GEMV must pay.

For each cell (8B gate+up 4096 -> [14336, 14336], gate/up 4096 -> [14336], down 14336 -> [4096]; weights bf16 and
fp8_e4m3; sparsity 0.5 and 0.75; batch 1), in one run, every time the median over `--reps` of bench_kernels'
graph-replay median (`median_call_us`), weights rotated over bench_kernels' `copies` of the kept bytes:
  bound_us     today's path bytes (bench_fused `path_bytes`: kept rows, scales, x, tau, y) over the ceiling,
               the faster of the plain read and cuBLAS's dense bf16 on the shape (as bench_fused takes it);
  ours_us      today's kernel (sparse_linear_op / sparse_linear_q_op, launch_spec's choice) and its % of bound;
  empty_us     one block that returns at once (floor_kernels.cu `wsp_floor_empty`), back to back in a graph;
  chain_us     floor_kernels.cu `wsp_floor_chain`, one block per SM: read x (written by the previous call, in L2),
               derive from it an address into this call's weight copy that no recent call read (DRAM), load a
               256-byte segment there, reduce across the block, write y (and the next call's x); `chain_1_us`
               with one block, `chain_l2_us` with a fixed address (the segment in L2: the DRAM trip's control);
               `*_check` in the JSON: what the counters say (calls made, in ring order, no segment read twice);
  dense_equal  torch.matmul in bf16 (the faster of both layouts) with x [1, in'] on a dense weight with as many
               bytes as the cell's kept rows (in' = in * keep * weight bytes / 2, to a multiple of 8), and its % of
               the bound for those bytes (weight, x, y): the vendor's GEMV on the same traffic, no sparsity at all;
  read_us      floor_kernels.cu `wsp_floor_read`: a grid that only reads the cell's bytes (today's path bytes, from
               the start of each weight copy), no dependency, the fastest of 1, 2, 4 and 8 blocks per SM; its % of
               the bound is what streaming exactly these bytes reaches here, ramp-up and tail included;
  dread_us     `wsp_floor_dread`: the same read behind the chain's dependency (x from the previous call first, the
               addresses from it, a block reduction, y and the next call's x): the least any activation-sparse
               GEMV of these bytes takes, even one whose kept rows were contiguous;
  sdread_us    `wsp_floor_sdread`: today's kernel's weight traffic alone: its grid, tile and cluster split reading the
               same 16-byte pieces of the same kept rows in the same order, the row list staged in shared memory, a
               fold and a block reduction (no x, no mask, no multiply-add, no cluster reduction): with dread, it
               splits what today's kernel pays above the bound into the scattered access and the rest;
  ceiling %    bound / max(bound + chain_us, dread_us): the best any design reaches; "out of reach" where it is
               below the bar (85% at 0.5, 75% at 0.75).

    python benchmarks/bench_floor.py --json OUT.json [--weights bf16 fp8] [--reps 3] [--sparsities 0.5 0.75]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from bench_fused import (
    BARS,
    DTYPE,
    SHAPES,
    WEIGHTS,
    _time,
    _weights,
    dense_ceiling,
    path_bytes,
    pct_of_bound,
    sparsity_case,
)
from bench_kernels import PER_GRAPH, REPLAYS, ceilings, copies, timing

from wisparse_export import kernels

SOURCE = Path(__file__).resolve().with_name("floor_kernels.cu")  # absolute: compile_ptx joins it to plugins/
SEG = 256  # bytes of weight row a chain block loads (floor_kernels.cu WSP_SEG)
CELLS = {  # name: (in, splits, producer kind of x)
    "8B gate+up 4096->[14336,14336]": SHAPES["8B gate+up 4096->[14336,14336]"],
    "8B gate/up 4096->[14336]": (4096, [14336], "rmsnorm"),
    "8B down 14336->[4096]": SHAPES["8B down 14336->[4096]"],
}
SPARSITIES = (0.5, 0.75)


def chain_geometry(in_f: int, row_bytes: int, blocks: int) -> tuple[int, int]:
    """(positions, step in bytes) of the chain's reads in one weight copy: a position spans whole rows covering the
    blocks' segments (so two positions share no byte), and the last one ends inside the copy."""
    step = -(-blocks * SEG // row_bytes) * row_bytes
    positions = (in_f * row_bytes - blocks * SEG) // step + 1
    if positions < 1 or step % 16 or step >= 2**31:
        raise ValueError(f"no chain geometry for {blocks} blocks on [{in_f}, {row_bytes} bytes]")
    return positions, step


def dense_equal_in(splits: Sequence[int], counts: Sequence[int], w_elem: int) -> int:
    """in' of the dense bf16 weight [out, in'] with as many bytes as the kept rows (to a multiple of 8 channels,
    16-byte rows as any real weight has)."""
    kept = sum(c * s for c, s in zip(counts, splits, strict=True)) * w_elem
    return max(8, round(kept / (2 * sum(splits)) / 8) * 8)


def dense_bytes(in_f: int, out: int, elem: int = 2) -> int:
    """What a dense batch-1 GEMV moves: the weight, x and y."""
    return in_f * out * elem + (in_f + out) * elem


def ceiling_pct(bound_us: float, chain_us: float, dread_us: float = 0.0) -> float:
    """% of the bound a design reaches that pays only the chain on top of the ceiling, and no less than the
    dependent read of its bytes."""
    return 100.0 * bound_us / max(bound_us + chain_us, dread_us)


def mark(ceiling: float, bar: float) -> str:
    return "out of reach" if ceiling < bar else "reachable"


def floor_spec(name: str, blocks: int, args: Sequence[int], arch: int, seg: int = SEG,
               defines: dict[str, int] | None = None, shared_mem: int = 0) -> kernels.LaunchSpec:
    """A floor_kernels.cu entry point as a LaunchSpec (the package's NVRTC path and PTX cache); `defines`: more
    macros (e.g. sdread's WSP_U); `shared_mem`: dynamic shared memory bytes (sdasync's ring)."""
    ptx = kernels.compile_ptx(str(SOURCE), {"WSP_NAME": "wsp_floor", "WSP_SEG": seg, "WSP_THREADS": kernels.THREADS,
                                            **(defines or {})}, arch)
    return kernels.LaunchSpec(name, ptx, (blocks, 1, 1), (kernels.THREADS, 1, 1), shared_mem, tuple(args), 1, 0, 1, 1,
                              False)


class Chain:
    """Chain (or empty) kernel calls over weight copies: call i reads x_i and writes x_{i+1 mod n} (a ring, so
    the counter advances by one a call however the graph replays), y one value a block."""

    def __init__(self, wts: list[torch.Tensor], in_f: int, row_bytes: int, blocks: int, arch: int,
                 fixed: bool = False, name: str = "wsp_floor_chain"):
        positions, step = chain_geometry(in_f, row_bytes, blocks)
        self.wts, self.n, self.positions = wts, len(wts), 1 if fixed else positions
        self.spec = floor_spec(name, blocks, (self.positions, step, self.n), arch)
        self.xs = torch.zeros(self.n, in_f, dtype=DTYPE, device=wts[0].device)  # first 4 bytes: the counter
        self.y = torch.zeros(blocks, dtype=torch.int32, device=wts[0].device)

    def call(self, i: int) -> None:
        kernels.launch(self.spec, [self.xs[i].data_ptr(), self.wts[i].data_ptr()], self.y.data_ptr(),
                       torch.cuda.current_stream().cuda_stream, trailing=[self.xs[(i + 1) % self.n].data_ptr()])

    def calls(self) -> list:
        return [partial(self.call, i) for i in range(self.n)]

    def check(self) -> dict:
        """What the counters say: calls made, whether every call i read c = i mod n (so c picked copy c mod n, as
        the kernel assumes) and whether no (copy, position) was read twice (fewer calls than copies x positions;
        the fixed-address control rereads by design)."""
        c = self.xs.view(torch.int32)[:, 0].tolist()
        return {"calls": max(c), "ring_ok": ring_ok(c), "fresh": max(c) <= self.n * self.positions}


def ring_ok(counters: Sequence[int]) -> bool:
    """What calls in ring order from zeroed counters leave: n consecutive values past the first round, x_i's
    congruent to i mod n (x_i is only written by call i - 1, with x_{i-1} + 1)."""
    n = len(counters)
    return max(counters) > n and max(counters) - min(counters) == n - 1 and all(
        c % n == i for i, c in enumerate(counters))


def read_us(wts: list[torch.Tensor], nbytes: int, sms: int, arch: int, reps: int, dep: bool = False,
            defines: dict[str, int] | None = None) -> tuple[float, int, bool]:
    """(us, blocks, ring_ok): the read of the first nbytes of each weight copy (dep: behind the chain's
    dependency, its counters in a ring like Chain's, ring_ok for every grid tried), the fastest grid of 1-8 blocks
    per SM; `defines`: floor_kernels.cu macros (WSP_L2PF)."""
    n, dev = len(wts), wts[0].device
    best, rings = (float("inf"), 0), []
    for blocks in (sms, 2 * sms, 4 * sms, 8 * sms):
        spec = floor_spec("wsp_floor_dread" if dep else "wsp_floor_read", blocks, (-(-nbytes // 16), 0, n), arch,
                          defines=defines)
        xs = torch.zeros(n, 4, dtype=torch.int32, device=dev)  # 16 bytes a counter
        y = torch.zeros(blocks, dtype=torch.int32, device=dev)

        def call(i: int, spec=spec, xs=xs, y=y) -> None:
            kernels.launch(spec, [xs[i].data_ptr(), wts[i].data_ptr()], y.data_ptr(),
                           torch.cuda.current_stream().cuda_stream, trailing=[xs[(i + 1) % n].data_ptr()])

        best = min(best, (_time([partial(call, i) for i in range(n)], n, reps), blocks))
        torch.cuda.synchronize()
        rings.append(not dep or ring_ok(xs[:, 0].tolist()))
    return (*best, all(rings))


def sdread_tables(idx: torch.Tensor, count: Sequence[int], splits: Sequence[int], in_f: int, tile: int,
                  cluster: int, elem: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What wsp_floor_sdread needs to walk today's kernel's segments: starts [P, C + 1] (rank r of a cluster takes
    the kept channels of its projection in [r * k_per, (r + 1) * k_per), k_per as the kernel rounds it) and tiles
    [T, 2] (projection, first column byte of tile t; projections tiled separately, as today's kernel does)."""
    if any(sp % tile for sp in splits):
        raise ValueError(f"every projection must be whole tiles of {tile} columns: {list(splits)}")
    starts = range_starts(idx, count, in_f, cluster)
    tiles, off = [], 0
    for p, sp in enumerate(splits):
        tiles += [(p, (off + t * tile) * elem) for t in range(sp // tile)]
        off += sp
    return starts, torch.tensor(tiles, dtype=torch.int32)


def range_starts(idx: torch.Tensor, count: Sequence[int], in_f: int, cluster: int) -> torch.Tensor:
    """[P, C + 1] int32: where rank r's kept channels begin in each projection's list, rank r taking the channels
    [r * k_per, (r + 1) * k_per), k_per as today's kernel rounds it (a multiple of 32)."""
    k_per = (-(-in_f // cluster) + 31) // 32 * 32
    bounds = torch.tensor([min(in_f, r * k_per) for r in range(cluster + 1)], dtype=torch.int32)
    return torch.stack([torch.searchsorted(idx[p, :n].cpu().contiguous(), bounds)
                        for p, n in enumerate(count)]).to(torch.int32)


def sdread_us(case, spec: kernels.LaunchSpec, wts: list[torch.Tensor], in_f: int, splits: Sequence[int], elem: int,
              arch: int, reps: int, defines: dict[str, int] | None = None) -> float:
    """wsp_floor_sdread on today's kernel's grid, tile and cluster (`spec`), over the weight copies."""
    idx, _, count = case.lst
    starts, tiles = sdread_tables(idx, count.tolist(), splits, in_f, spec.tile, spec.cluster, elem)
    if tuple(spec.grid[:2]) != (len(tiles) * spec.cluster, 1):
        raise ValueError(f"{spec.name}: grid {spec.grid} is not {len(tiles)} tiles x {spec.cluster}")
    dev = wts[0].device
    starts, tiles, idx = starts.to(dev), tiles.to(dev), idx.contiguous()
    fl = floor_spec("wsp_floor_sdread", spec.grid[0], (in_f, sum(splits) * elem, spec.cluster), arch,
                    seg=spec.tile * elem, defines=defines)
    y = torch.zeros(spec.grid[0], dtype=torch.int32, device=dev)

    def call(w: torch.Tensor) -> None:
        kernels.launch(fl, [idx.data_ptr(), starts.data_ptr(), tiles.data_ptr(), w.data_ptr()], y.data_ptr(),
                       torch.cuda.current_stream().cuda_stream)

    return _time([partial(call, w) for w in wts], len(wts), reps)


def today_call(x: torch.Tensor, w: torch.Tensor, scale, tau: torch.Tensor, splits: Sequence[int]) -> torch.Tensor:
    if scale is None:
        return kernels.sparse_linear_op(x, w, tau, None, splits)
    return kernels.sparse_linear_q_op(x, w, scale, tau, None, splits)


def save_rows(path: str, rows: list[dict], t0: float, **extra) -> None:
    """A probe's JSON: when, on which GPU, by which command and clock, its rows (and `extra` fields, which may name
    another clock), and how long it took."""
    with open(path, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "gpu": torch.cuda.get_device_name(),
                   "command": shlex.join([sys.executable, *sys.argv]), "timing": timing(), **extra, "rows": rows,
                   "seconds": time.time() - t0}, f, indent=1)


def probe_parser(doc: str) -> argparse.ArgumentParser:
    """A probe's command line: its docstring's first line, --json and --reps; each probe adds its own options."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each graph-replay median (median taken)")
    return ap


def probe_start(ap: argparse.ArgumentParser, script: str) -> tuple[argparse.Namespace, float]:
    """Parse; without a GPU a one-line error and a non-zero exit; seed 0; the start time (save_rows' t0)."""
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit(f"error: {script} needs a CUDA GPU, and none is visible")
    torch.manual_seed(0)
    return args, time.time()


def dense_equal(out: int, in_eq: int, reps: int) -> dict[str, float]:
    """torch.matmul in bf16 with x [1, in'] on [out, in'] and on [in', out], weights rotated: the faster."""
    n = copies(in_eq * out * 2)
    w = [torch.randn(out, in_eq, device="cuda").to(DTYPE) for _ in range(n)]
    wt = [m.t().contiguous() for m in w]
    x = torch.randn(1, in_eq, device="cuda").to(DTYPE)
    nat = _time([lambda m=m: torch.matmul(x, m.t()) for m in w], n, reps)
    tr = _time([lambda m=m: torch.matmul(x, m) for m in wt], n, reps)
    del w, wt
    return {"us": min(nat, tr), "nat_us": nat, "t_us": tr}


def fresh_per_graph(n: int, positions: int, reps: int, replays: int = REPLAYS) -> int:
    """Calls a graph (whole rings of n, at most bench_kernels' PER_GRAPH) that keep every chain read fresh over
    `reps` timings, each n warm-up calls and 1 + `replays` replays: the 200-call graphs of the clock since
    2026-12-03 would reread segments."""
    most = (n * positions // reps - n) // (replays + 1)
    return max(n, min(PER_GRAPH, most) // n * n)


def chains(wts: list[torch.Tensor], in_f: int, row_bytes: int, sms: int, arch: int, reps: int) -> dict:
    """chain_us (one block per SM), chain_1_us (one block), chain_l2_us (fixed address: the segment in L2), each
    with what its counters say (Chain.check) under `{key}_check` and its calls a graph under `{key}_per_graph`."""
    out = {}
    for key, blocks, fixed in (("chain", sms, False), ("chain_1", 1, False), ("chain_l2", sms, True)):
        c = Chain(wts, in_f, row_bytes, blocks, arch, fixed)
        per_graph = PER_GRAPH if fixed else fresh_per_graph(c.n, c.positions, reps)
        out[f"{key}_per_graph"] = per_graph
        out[f"{key}_us"] = _time(c.calls(), c.n, reps, per_graph)
        torch.cuda.synchronize()
        out[f"{key}_check"] = c.check()
    return out


def measure_cell(name: str, s: float, weights: str | None, wts: list[torch.Tensor], scale, ceiling: float,
                 reps: int, sms: int, arch: int) -> dict:
    """One cell: bound, today's kernel, the chains and the equal-bytes dense GEMV (row of the JSON)."""
    in_f, splits, kind = CELLS[name]
    out, w_elem = sum(splits), 1 if weights else 2
    case, counts, n = sparsity_case(in_f, splits, kind, s, 1, w_elem, len(wts))
    nbytes = path_bytes(in_f, splits, kind, counts, 1, weights)
    ours = _time([lambda m=m: today_call(case.v, m, scale, case.tau, splits) for m in wts[:n]], n, reps)
    bound, pct = pct_of_bound(nbytes["today"], ours, ceiling)
    spec = kernels.launch_spec(DTYPE, in_f, splits, 1, weights=weights, sms=sms, arch=arch)
    row = {"shape": name, "in": in_f, "splits": splits, "weights": weights or "bf16", "batch": 1, "sparsity": s,
           "counts": counts, "keep": sum(counts) / (len(counts) * in_f), "copies": n, "bytes": nbytes["today"],
           "bound_us": bound, "list_bound_us": pct_of_bound(nbytes["list"], 1.0, ceiling)[0], "ours_us": ours,
           "ours_pct": pct, "kernel": spec.name}
    row.update(chains(wts[:n], in_f, out * w_elem, sms, arch, reps))
    row["read_us"], row["read_blocks"], _ = read_us(wts[:n], nbytes["today"], sms, arch, reps)
    row["dread_us"], row["dread_blocks"], row["dread_ring_ok"] = read_us(wts[:n], nbytes["today"], sms, arch,
                                                                         reps, dep=True)
    row["read_pct"], row["dread_pct"] = 100.0 * bound / row["read_us"], 100.0 * bound / row["dread_us"]
    row["sdread_us"] = sdread_us(case, spec, wts[:n], in_f, splits, w_elem, arch, reps)
    row["sdread_pct"] = 100.0 * bound / row["sdread_us"]
    in_eq = dense_equal_in(splits, counts, w_elem)
    eq = dense_equal(out, in_eq, reps)
    eq_bound, eq_pct = pct_of_bound(dense_bytes(in_eq, out), eq["us"], ceiling)
    row.update(dense_equal_in=in_eq, dense_equal_us=eq["us"], dense_equal_nat_us=eq["nat_us"],
               dense_equal_t_us=eq["t_us"], dense_equal_bound_us=eq_bound, dense_equal_pct=eq_pct,
               bar_pct=BARS.get(s), ceiling_pct=ceiling_pct(bound, row["chain_us"], row["dread_us"]))
    row["mark"] = mark(row["ceiling_pct"], row["bar_pct"]) if row["bar_pct"] is not None else None
    return row


def bench_cells(name: str, weights: str | None, sparsities: Sequence[float], read_bps: float, reps: int
                ) -> list[dict]:
    """Every sparsity of one shape and weight format, on weight copies enough for the highest sparsity."""
    in_f, splits, _ = CELLS[name]
    out, w_elem = sum(splits), 1 if weights else 2
    dev = torch.device("cuda")
    sms, arch = kernels.sm_count(dev), kernels.device_arch(dev)
    wts, scale = _weights(in_f, out, weights, copies(in_f * out * w_elem * (1 - max(sparsities))))
    dense_us, ceiling = dense_ceiling(in_f, out, 1, read_bps)
    rows = []
    for s in sparsities:
        row = measure_cell(name, s, weights, wts, scale, ceiling, reps, sms, arch)
        rows.append({**row, "dense_bf16_us": dense_us, "ceiling_tbps": ceiling / 1e12})
    del wts
    torch.cuda.empty_cache()
    return rows


def empty_us(arch: int, reps: int) -> float:
    """The empty kernel (one block), back to back in a graph, with the chain's parameters."""
    w = [torch.zeros(2 * SEG, dtype=torch.uint8, device="cuda") for _ in range(2)]
    empty = Chain(w, 2, SEG, 1, arch, name="wsp_floor_empty")
    return _time(empty.calls(), empty.n, reps)


def table(rows: list[dict], empty: float) -> str:
    head = (f"{'cell':<32}{'w':>9}{'s':>5}{'keep':>6}{'bound':>7}{'ours [%]':>13}{'empty':>7}{'chain':>7}"
            f"{'1 blk':>7}{'L2':>6}{'read [%]':>12}{'dread [%]':>12}{'sdread [%]':>12}{'dense= [%]':>14}"
            f"{'ceil %':>8}{'bar':>5}  mark")
    lines = [head]
    for r in rows:
        checks = [r[f"{k}_check"] for k in ("chain", "chain_1")]
        good = all(c["ring_ok"] and c["fresh"] for c in checks) and r.get("dread_ring_ok", True)
        ok = "" if good else " (chain counters wrong: see JSON)"
        bar = f"{r['bar_pct']:5.0f}" if r["bar_pct"] is not None else "    -"
        us = "".join(f"{r[k + '_us']:>6.1f} [{r[k + '_pct']:3.0f}]" for k in ("read", "dread", "sdread"))
        lines.append(f"{r['shape']:<32}{r['weights']:>9}{r['sparsity']:>5}{r['keep']:>6.2f}{r['bound_us']:>7.1f}"
                     f"{r['ours_us']:>7.1f} [{r['ours_pct']:3.0f}]{empty:>7.2f}{r['chain_us']:>7.2f}"
                     f"{r['chain_1_us']:>7.2f}{r['chain_l2_us']:>6.2f}{us}{r['dense_equal_us']:>8.1f} "
                     f"[{r['dense_equal_pct']:3.0f}]{r['ceiling_pct']:>8.1f}{bar}  {r['mark'] or '-'}{ok}")
    lines.append("us per call (graph-replay medians); bound = today's bytes / ceiling; read = a bare read of those "
                 "bytes, dread = the same behind x, sdread = today's kernel's weight reads alone [% of bound]; "
                 "ceil % = bound / max(bound + chain, dread); dense= = bf16 matmul on the kept bytes, % of its own "
                 "bound")
    return "\n".join(lines)


def nvidia_driver() -> str | None:
    try:
        got = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return got.stdout.strip().splitlines()[0] if got.returncode == 0 and got.stdout.strip() else None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--weights", nargs="+", choices=list(WEIGHTS), default=list(WEIGHTS))
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each graph-replay median (median taken)")
    ap.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("error: bench_floor.py needs a CUDA GPU, and none is visible")
    torch.manual_seed(0)
    t0 = time.time()
    copy, read = ceilings()
    empty = empty_us(kernels.device_arch(torch.device("cuda")), args.reps)
    tiny = torch.zeros(1, device="cuda")
    tiny_us = _time([tiny.zero_], 1, args.reps)
    rows = [r for w in args.weights for name in CELLS
            for r in bench_cells(name, WEIGHTS[w], args.sparsities, read, args.reps)]
    for r in rows:
        r["empty_us"] = empty
    save_rows(args.json, rows, t0, torch=torch.__version__, cuda_runtime=torch.version.cuda,
              cuda_driver=kernels.driver_version(), nvidia_driver=nvidia_driver(), nvrtc=kernels.nvrtc_version(),
              copy_tbps=copy / 1e12, read_tbps=read / 1e12, empty_us=empty, torch_one_element_us=tiny_us,
              seg_bytes=SEG)
    print(table(rows, empty))
    print(f"plain read {read / 1e12:.2f} TB/s, copy {copy / 1e12:.2f} TB/s; empty kernel {empty:.2f} us, torch's "
          f"one-element zero_ {tiny_us:.2f} us; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
