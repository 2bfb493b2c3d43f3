"""Where a sparse GEMV call's time goes, and what a tile-major weight layout or the dense path would change.

One GPU run, three parts, JSON with every figure and a summary printed last:
1. phases: the profiling build (WSP_PROF in plugins/sparse_gemv.cu) stamps %globaltimer at six points in every
   block (entry, mask + compaction done, weight stream done, block reduction done, cluster reduction done, stored,
   exit) for every call of a CUDA graph of back-to-back calls; per call: the spread of block entries, the median
   and slowest block per phase, the span from the first entry to the last exit, and the gap to the next call.
2. layout: the kernel reading W tile-major ([out / TN][in][TN], WSP_TILED) against the shipped [in, out] layout,
   same configuration, and tile-major at other tilings; outputs checked equal.
3. dense path: at low sparsity, the kernel against masking + cuBLAS and against plain cuBLAS (what a layer planned
   at sparsity 0 needs), to place the batch-1 crossover.

    python benchmarks/profile_kernel.py --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
from bench_kernels import L2_BYTES, SHAPES, median_call_us, thresholds

from wisparse_export import kernels
from wisparse_export.kernels import sparse_linear_op as op

PHASES = ["mask", "stream", "block_red", "cluster_red", "store", "exit"]


def run(spec, x, w, tau, y, prof=None):
    kernels.launch(spec, [x.data_ptr(), w.data_ptr(), tau.data_ptr()], y.data_ptr(),
                   torch.cuda.current_stream().cuda_stream, trailing=() if prof is None else (prof.data_ptr(),))


def tile_major(wt: torch.Tensor, tile: int) -> torch.Tensor:
    k, n = wt.shape
    return wt.reshape(k, n // tile, tile).permute(1, 0, 2).contiguous()


def phases(spec, x, w, tau, calls: int = 24) -> dict:
    """Per-phase times (us) from the profiling build, over the middle half of `calls` back-to-back graph calls."""
    blocks = spec.grid[0] * spec.grid[1]
    prof = torch.zeros(calls, blocks, 16, dtype=torch.int64, device="cuda")
    y = torch.empty(x.shape[0], sum(spec.args[3:]), dtype=x.dtype, device="cuda")
    run(spec, x, w, tau, y, prof[0])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            run(spec, x, w, tau, y, prof[i])
    graph.replay()
    torch.cuda.synchronize()
    prof = prof.cpu()
    g = (prof[..., :7] - prof[..., 0].min()).double() / 1e3  # us from the first entry (int64 ns before: exact)
    c = (prof[..., 8:15] - prof[..., 8:9]).double()  # cycles from the block's own entry
    mid = range(calls // 4, 3 * calls // 4)
    per = {k: [] for k in ["entry_spread", "span", "gap", "exit_spread"] + [f"{p}_med" for p in PHASES]
           + [f"{p}_max" for p in PHASES] + [f"{p}_cyc_med" for p in PHASES]}
    for i in mid:
        s, e = g[i, :, 0], g[i, :, 6]
        per["entry_spread"].append((s.max() - s.min()).item())
        per["exit_spread"].append((e.max() - e.min()).item())
        per["span"].append((e.max() - s.min()).item())
        per["gap"].append((g[i + 1, :, 0].min() - e.max()).item())
        for j, p in enumerate(PHASES):
            d = g[i, :, j + 1] - g[i, :, j]
            per[f"{p}_med"].append(d.median().item())
            per[f"{p}_max"].append(d.max().item())
            per[f"{p}_cyc_med"].append((c[i, :, j + 1] - c[i, :, j]).median().item())
    steps = torch.diff(torch.unique(g[mid.start:mid.stop, :, :7].flatten()))
    out = {k: statistics.median(v) for k, v in per.items()}
    out["timer_step_us"] = steps[steps > 0].min().item() if len(steps) else float("nan")
    return out


def layout_and_phases(name, in_f, splits, sparsities):
    out_f = sum(splits)
    dt = torch.bfloat16
    nbytes = in_f * out_f * 2
    n_copies = max(2, math.ceil(3 * L2_BYTES / nbytes))
    wt = [torch.randn(in_f, out_f, device="cuda").div_(in_f**0.5).to(dt) for _ in range(n_copies)]
    x = torch.randn(1, in_f, device="cuda").to(dt)
    chosen = kernels.launch_spec(dt, in_f, splits, 1)
    configs = [(chosen.tile, chosen.cluster)] + [(t, c) for t, c in ((128, 1), (128, 2), (128, 4), (128, 8),
                                                                     (256, 1), (256, 2), (64, 2), (64, 4))
                                                 if (t, c) != (chosen.tile, chosen.cluster)]
    configs = [(t, c) for t, c in configs if all(s % t == 0 for s in splits) and in_f >= 256 * c]
    tiled = {t: [tile_major(m, t) for m in wt] for t in {t for t, _ in configs}}
    rows = []
    for s in sparsities:
        tau = thresholds(s, in_f, len(splits))
        keep = (x.float().abs() > tau[0]).float().mean().item()
        y = torch.empty(1, out_f, dtype=dt, device="cuda")
        dense = median_call_us([lambda m=m: torch.matmul(x, m) for m in wt], n_copies)
        row = {"shape": name, "sparsity": s, "keep": keep, "dense_us": dense,
               "chosen": f"{chosen.tile}x{chosen.cluster}", "us": {}}
        row["us"]["shipped"] = median_call_us([lambda m=m, t=tau, y=y: run(chosen, x, m, t, y) for m in wt], n_copies)
        ref = y.clone()
        for t, c in configs:
            spec = kernels.launch_spec(dt, in_f, splits, 1, tile=t, cluster=c, tune={"WSP_TILED": 1})
            row["us"][f"tiled {t}x{c}"] = median_call_us([lambda m=m, sp=spec, tau=tau, y=y: run(sp, x, m, tau, y)
                                                         for m in tiled[t]], n_copies)
            if (t, c) == (chosen.tile, chosen.cluster):
                row["tiled_max_diff"] = (y.float() - ref.float()).abs().max().item()
        prof = kernels.launch_spec(dt, in_f, splits, 1, tile=chosen.tile, cluster=chosen.cluster,
                                   tune={"WSP_PROF": 1})
        row["phases"] = phases(prof, x, wt[0], tau)
        best = min(configs, key=lambda tc: row["us"][f"tiled {tc[0]}x{tc[1]}"])
        prof_t = kernels.launch_spec(dt, in_f, splits, 1, tile=best[0], cluster=best[1],
                                     tune={"WSP_PROF": 1, "WSP_TILED": 1})
        row["phases_tiled_best"] = {"config": f"{best[0]}x{best[1]}", **phases(prof_t, x, tiled[best[0]][0], tau)}
        rows.append(row)
        print(f"{name:<29} s={s:<5} dense {dense:6.1f}  " + "  ".join(f"{k}:{v:.1f}" for k, v in row["us"].items()),
              flush=True)
    del wt, tiled
    torch.cuda.empty_cache()
    return rows


def dense_path(name, in_f, splits, sparsities):
    out_f = sum(splits)
    dt = torch.bfloat16
    n_copies = max(2, math.ceil(3 * L2_BYTES / (in_f * out_f * 2)))
    w = [torch.randn(out_f, in_f, device="cuda").div_(in_f**0.5).to(dt) for _ in range(n_copies)]
    wt = [m.t().contiguous() for m in w]
    x = torch.randn(1, in_f, device="cuda").to(dt)
    rows = []
    plain = median_call_us([lambda m=m: torch.matmul(x, m.t()) for m in w], n_copies)
    for s in sparsities:
        tau = thresholds(s, in_f, 1)
        kern = median_call_us([lambda m=m, t=tau: op(x, m, t, None, splits) for m in wt], n_copies)
        masked = median_call_us([lambda m=m, t=tau[0]: torch.matmul(kernels.mask_op(x, t), m.t()) for m in w], n_copies)
        rows.append({"shape": name, "sparsity": s, "cublas_us": plain, "kernel_us": kern, "mask_cublas_us": masked})
        print(f"{name:<29} s={s:<5} cuBLAS {plain:6.1f}  kernel {kern:6.1f}  mask+cuBLAS {masked:6.1f}", flush=True)
    del w, wt
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    tiny = torch.zeros(1, device="cuda")
    floor = median_call_us([tiny.zero_], 1)
    res = {"gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "tiny_kernel_us": floor,
           "layout": [], "dense_path": []}
    for name in ("8B gate/up 4096->14336", "8B down 14336->4096", "8B q/o 4096->4096", "8B gate+up fused 4096->28672",
                 "70B gate/up 8192->28672", "70B down 28672->8192"):
        in_f, splits = SHAPES[name]
        res["layout"] += layout_and_phases(name, in_f, splits, [0.0, 0.5, 0.75, 0.98])
    for name in ("8B gate/up 4096->14336", "8B down 14336->4096", "8B q/o 4096->4096"):
        in_f, splits = SHAPES[name]
        res["dense_path"] += dense_path(name, in_f, splits, [0.0, 0.02, 0.05, 0.1, 0.15, 0.25])
    res["seconds"] = time.time() - t0
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)
    print(f"\none-element kernel in a graph: {floor:.2f} us")
    print("phases (shipped kernel, us; median block / slowest block):")
    for r in res["layout"]:
        p = r["phases"]
        print(f"  {r['shape']:<29} s={r['sparsity']:<5} span {p['span']:.2f} gap {p['gap']:.2f} "
              f"entry-spread {p['entry_spread']:.2f} exit-spread {p['exit_spread']:.2f} | "
              + " ".join(f"{k} {p[k + '_med']:.2f}/{p[k + '_max']:.2f}" for k in PHASES)
              + f" (timer step {p['timer_step_us']:.3f})")
    print("tile-major best vs shipped (us):")
    for r in res["layout"]:
        t = {k: v for k, v in r["us"].items() if k.startswith("tiled")}
        k = min(t, key=t.get)
        print(f"  {r['shape']:<29} s={r['sparsity']:<5} dense {r['dense_us']:.1f} shipped {r['us']['shipped']:.1f} "
              f"{k} {t[k]:.1f} (same config: {r['us'].get('tiled ' + r['chosen'], float('nan')):.1f}, "
              f"max diff {r.get('tiled_max_diff', float('nan'))})")


if __name__ == "__main__":
    main()
