"""Where a sparse GEMV call's time goes, what tuning variants change, and where the dense path wins.

One GPU run, three parts, JSON with every figure and a summary printed last:
1. phases: the profiling build (WSP_PROF in plugins/sparse_gemv.cu) stamps %globaltimer at six points in every
   block (entry, mask + compaction done, weight stream done, block reduction done, cluster reduction done, stored,
   exit) for every call of a CUDA graph of back-to-back calls; per call: the spread of block entries, the median
   and slowest block per phase, the span from the first entry to the last exit, and the gap to the next call.
2. variants: the shipped build against tuning macros on the same tiling (here: the cluster reduction by push or
   by pull), outputs compared with the shipped build's.
3. dense path: at low sparsity, the kernel against masking + cuBLAS and against plain cuBLAS (what a layer planned
   at sparsity 0 needs), to place the batch-1 crossover.

    python benchmarks/profile_kernel.py --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from bench_kernels import SHAPES, copies, median_call_us, run, thresholds

from wisparse_export import kernels, scores
from wisparse_export.kernels import sparse_linear_op as op

PHASES = ["mask", "stream", "block_red", "cluster_red", "store", "exit"]


def phases(spec, x, ws, tau) -> dict:
    """Per-phase times (us) from the profiling build, over the middle half of back-to-back calls in one graph.

    Call i reads weight copy i % len(ws), as the timed runs do, so the kept rows come from HBM, not from L2.
    """
    calls = max(24, len(ws))
    blocks = spec.grid[0] * spec.grid[1]
    prof = torch.zeros(calls, blocks, 16, dtype=torch.int64, device="cuda")
    y = torch.empty(x.shape[0], sum(spec.args[3:]), dtype=x.dtype, device="cuda")
    run(spec, x, ws[0], tau, y, prof[0])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            run(spec, x, ws[i % len(ws)], tau, y, prof[i])
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


VARIANTS = {  # label: tuning macros over the shipped configuration (tile x cluster from launch_spec)
    "pull": {"WSP_PUSH": 0},
    "push": {"WSP_PUSH": 1},
}


def variants_and_phases(name, in_f, splits, sparsities):
    """Per-call time of each variant (same tiling), outputs against the shipped build, and the phase stamps."""
    out_f = sum(splits)
    dt = torch.bfloat16
    nbytes = in_f * out_f * 2
    n_dense = copies(nbytes)
    wt = [torch.randn(in_f, out_f, device="cuda").div_(in_f**0.5).to(dt)
          for _ in range(copies(nbytes * (1 - max(sparsities))))]
    x = torch.randn(1, in_f, device="cuda").to(dt)
    chosen = kernels.launch_spec(dt, in_f, splits, 1)
    cfg = {"tile": chosen.tile, "cluster": chosen.cluster}
    rows = []
    for s in sparsities:
        tau = thresholds(s, in_f, len(splits))
        n_copies = min(len(wt), copies(nbytes * scores.keep(x, tau[0]).float().mean().item()))
        y = torch.empty(1, out_f, dtype=dt, device="cuda")
        dense = median_call_us([lambda m=m: torch.matmul(x, m) for m in wt[:n_dense]], n_dense)
        row = {"shape": name, "sparsity": s, "dense_us": dense, "chosen": f"{chosen.tile}x{chosen.cluster}",
               "us": {}, "max_diff": {}}
        row["us"]["shipped"] = median_call_us([lambda m=m, t=tau, y=y: run(chosen, x, m, t, y) for m in wt[:n_copies]],
                                              n_copies)
        ref = y.float().clone()
        row["max_abs_y"] = ref.abs().max().item()
        for label, tune in VARIANTS.items():
            spec = kernels.launch_spec(dt, in_f, splits, 1, **cfg, tune=tune)
            row["us"][label] = median_call_us([lambda m=m, sp=spec, t=tau, y=y: run(sp, x, m, t, y)
                                               for m in wt[:n_copies]], n_copies)
            row["max_diff"][label] = (y.float() - ref).abs().max().item()
        best = min(VARIANTS, key=lambda k: row["us"][k])
        row["phases"] = {}
        for label in dict.fromkeys(["pull", "push", best]):
            prof = kernels.launch_spec(dt, in_f, splits, 1, **cfg, tune={**VARIANTS[label], "WSP_PROF": 1})
            row["phases"][label] = phases(prof, x, wt[:n_copies], tau)
        rows.append(row)
        print(f"{name:<29} s={s:<5} dense {dense:6.1f}  " + "  ".join(f"{k}:{v:.2f}" for k, v in row["us"].items()),
              flush=True)
    del wt
    torch.cuda.empty_cache()
    return rows


def dense_path(name, in_f, splits, sparsities):
    out_f = sum(splits)
    dt = torch.bfloat16
    n_copies = copies(in_f * out_f * 2 * (1 - max(sparsities)))  # dense_path's sparsities are low: few copies
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
           "variants": [], "dense_path": []}
    for name in ("8B gate/up 4096->14336", "8B down 14336->4096", "8B q/o 4096->4096", "8B gate+up fused 4096->28672",
                 "70B gate/up 8192->28672", "70B down 28672->8192"):
        in_f, splits = SHAPES[name]
        res["variants"] += variants_and_phases(name, in_f, splits, [0.0, 0.5, 0.75, 0.98])
    for name in ("8B gate/up 4096->14336", "8B down 14336->4096", "8B q/o 4096->4096"):
        in_f, splits = SHAPES[name]
        res["dense_path"] += dense_path(name, in_f, splits, [0.0, 0.02, 0.05, 0.1, 0.15, 0.25])
    res["seconds"] = time.time() - t0
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)
    print(f"\none-element kernel in a graph: {floor:.2f} us")
    print("phases (us; median block / slowest block):")
    for r in res["variants"]:
        for label, p in r["phases"].items():
            print(f"  {r['shape']:<29} s={r['sparsity']:<5} {label:<12} span {p['span']:.2f} gap {p['gap']:.2f} "
                  f"entry-spread {p['entry_spread']:.2f} exit-spread {p['exit_spread']:.2f} | "
                  + " ".join(f"{k} {p[k + '_med']:.2f}/{p[k + '_max']:.2f}" for k in PHASES))
    print("variants (us per call, same tiling; max |y - shipped|):")
    for r in res["variants"]:
        print(f"  {r['shape']:<29} s={r['sparsity']:<5} {r['chosen']:<6} dense {r['dense_us']:.1f} "
              + " ".join(f"{k} {v:.2f}" for k, v in r["us"].items())
              + f" | diff {max(r['max_diff'].values()):.2g} of {r['max_abs_y']:.2g}")


if __name__ == "__main__":
    main()
