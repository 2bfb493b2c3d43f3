"""Sparse decode kernel vs torch.matmul (cuBLAS), one GPU run: JSON with every figure, a short table printed last.

Every time is the median over graph replays of per-call device time (CUDA events around a CUDA graph of 200+
calls, each replay queued behind a sleep kernel so the host's launch of it is not timed; --legacy-timing: 20 calls
onto an idle GPU, the way before 2026-12-03), with the weights rotated over enough copies that 3x the L2 cache is
read between two reads of the same bytes: counted in kept bytes for the sparse calls (the same x keeps the same rows),
in all bytes for the dense ones.
The dense reference is the faster of torch.matmul on nn.Linear's [out, in] layout and on the kernel's [in, out]
layout, measured in the same run; a fused group's dense reference is one matmul over the concatenated weight.
Bandwidth counts the bytes the kernel must move (kept weight rows of the union mask, x, tau, y) and is set against
a device-to-device copy measured here. Single linears are also timed as a model runs them (`runtime_us`:
SparseLinear after runtime.to_kernels, which takes the kernel, or cuBLAS where its rules send it, e.g. the plain dense
matmul for a layer planned at sparsity 0); the bars are read from that figure, with the op alone beside it.

    python benchmarks/bench_kernels.py --json OUT.json [--quick]
    python benchmarks/bench_kernels.py --json OUT.json --weights fp8 int8   # only the quantized table (below)
    python benchmarks/bench_kernels.py --json OUT.json --legacy-timing     # the clock before 2026-12-03

--weights: 1-byte weights (quant.py formats), bf16 activations, batch 1, each time the median of 3 repetitions of
the graph-replay median: torch.matmul in bf16; the dense FP8/INT8 references that run here (torch._scaled_mm with x
quantized per token to e4m3; torch._int_mm with x quantized per token to int8, x padded to the rows it requires;
torch.compile of gpt-fast's weight-only linear, `F.linear(x, W_q.to(bf16)) * scale`, conversion fused by Inductor);
our quantized kernel at sparsity 0 (its dense walk), 0.25, 0.5 and 0.75; beside each, the physical bound: the bytes
the call must move (kernels.bytes_moved) over the measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
from torch import nn

from wisparse_export import kernels, quant, scores
from wisparse_export.bench import weight_only_linear
from wisparse_export.kernels import sparse_linear_op as op
from wisparse_export.runtime import SparseLinear, to_kernels

SHAPES = {  # name: (in, splits)
    "8B q/o 4096->4096": (4096, [4096]),
    "8B gate/up 4096->14336": (4096, [14336]),
    "8B down 14336->4096": (14336, [4096]),
    "8B qkv fused 4096->6144": (4096, [4096, 1024, 1024]),
    "8B gate+up fused 4096->28672": (4096, [14336, 14336]),
    "70B gate/up 8192->28672": (8192, [28672]),
    "70B down 28672->8192": (28672, [8192]),
}
SPARSITIES = [0.0, 0.25, 0.5, 0.75, 0.9]
BATCHES = [1, 2, 4, 8]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
L2_BYTES = 60 * 2**20


def copies(read_bytes: float) -> int:
    """Weight copies to rotate so that 3x the L2 is read between two reads of the same bytes (kept rows included:
    the same x keeps the same rows every call)."""
    return max(2, math.ceil(3 * L2_BYTES / max(read_bytes, 1.0)))


def run(spec, x, w, tau, y, prof=None, scale=None) -> None:
    """One launch of a kernel spec (any tiling or tuning variant) on the current stream; `prof` only for the
    profiling build (benchmarks/profile_kernel.py); `scale` for 1-byte weights."""
    ptrs = [x.data_ptr(), w.data_ptr(), tau.data_ptr()] + ([] if scale is None else [scale.data_ptr()])
    kernels.launch(spec, ptrs, y.data_ptr(),
                   torch.cuda.current_stream().cuda_stream, trailing=() if prof is None else (prof.data_ptr(),))


QUEUED = True  # median_call_us: each replay queued behind a sleep kernel (--legacy-timing: launched onto an idle GPU)
PER_GRAPH = 200  # calls a graph (--legacy-timing: 20), so the graph's own start is ~1% of a call, as in a decode step
SLEEP_CYCLES = 200_000  # ~100 us at the H200's clock: longer than the host takes to queue the replay and its events
REPLAYS = 15  # graph replays a median_call_us, after one untimed


def median_call_us(calls, n_copies: int, replays: int = REPLAYS, per_graph: int | None = None,
                   queued: bool | None = None) -> float:
    """Median per-call device time of `calls[i % n_copies]()` captured in one CUDA graph of `per_graph`+ calls.

    Queued, a sleep kernel runs ahead of the start event, so the replay and the stop event are already waiting when
    the GPU reaches the start: the interval holds the graph's calls, not the host's launch of it. With 200 calls, the
    graph's start on the GPU (~2 us) is ~1% of a call, as in a decode step's one graph of hundreds of kernels. The
    way before 2026-12-03 (--legacy-timing: idle, 20 calls) spread both over 20 calls (benchmarks/probe_timing.py)."""
    queued = QUEUED if queued is None else queued
    per_graph = per_graph or PER_GRAPH
    per_graph = n_copies * math.ceil(per_graph / n_copies)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(n_copies):
            calls[i]()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(per_graph):
            calls[i % n_copies]()
    graph.replay()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if queued:
            torch.cuda._sleep(SLEEP_CYCLES)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / per_graph)
    return statistics.median(times)


def timing() -> str:
    """How median_call_us reads the clock, for the JSON."""
    return f"{'queued' if QUEUED else 'idle'}, {PER_GRAPH} calls a graph"


def ceilings() -> tuple[float, float]:
    """Device-to-device copy (bytes read + written per second) and a plain read (sum), eager, CUDA events."""
    src = torch.randn(2**29, device="cuda")  # 2 GiB
    dst = torch.empty_like(src)

    def timed(fn) -> float:
        for _ in range(3):
            fn()
        ts = []
        for _ in range(10):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b) * 1e-3)
        return statistics.median(ts)

    nbytes = src.numel() * 4
    return 2 * nbytes / timed(lambda: dst.copy_(src)), nbytes / timed(lambda: src.sum())


def thresholds(sparsity: float, in_f: int, parts: int) -> torch.Tensor:
    """tau such that each row of standard-normal x drops `sparsity` of its channels."""
    q = torch.quantile(torch.randn(2**20, device="cuda").abs(), sparsity).item() if sparsity else 0.0
    return torch.full((parts, in_f), q, device="cuda")


def bench_shape(name, in_f, splits, dtype, batches, sparsities, tiles=False):
    out = sum(splits)
    nbytes = in_f * out * 2
    n_dense = copies(nbytes)
    n_max = copies(nbytes * (1 - max(sparsities)))  # the fewest kept bytes: batch 1 at the highest sparsity
    wt = [torch.randn(in_f, out, device="cuda").div_(in_f**0.5).to(dtype) for _ in range(n_max)]  # kernel layout
    w = [m.t().contiguous() for m in wt[:n_dense]]  # [out, in], nn.Linear's layout: dense reference only
    # What a user's model runs: SparseLinear modules on the kernels (single linears only; a fused group's
    # members share one input and one launch, which the op rows already time).
    mods = None
    if len(splits) == 1:
        mods = nn.ModuleList()
        for m in wt:
            lin = nn.Linear(in_f, out, bias=False, device="meta", dtype=dtype)
            lin.weight = nn.Parameter(m.t(), requires_grad=False)
            mods.append(SparseLinear.convert(lin, 0.0, 0.0))
        to_kernels(mods, [])  # the weight already has the kernel layout: no copy
        assert all(mod.weight.data_ptr() == m.data_ptr() for mod, m in zip(mods, wt, strict=True))
    rows = []
    for b in batches:
        x = torch.randn(b, in_f, device="cuda").to(dtype)
        dense_nat = median_call_us([lambda m=m, x=x: torch.matmul(x, m.t()) for m in w], n_dense)
        dense_t = median_call_us([lambda m=m, x=x: torch.matmul(x, m) for m in wt[:n_dense]], n_dense)
        dense = min(dense_nat, dense_t)
        for s in sparsities:
            tau = thresholds(s, in_f, len(splits))
            keep = scores.keep(x, tau[0]).any(0).float().mean().item()  # union over the batch's rows
            n = min(n_max, copies(keep * nbytes))
            ours = median_call_us([lambda m=m, x=x, t=tau: op(x, m, t, None, splits) for m in wt[:n]], n)
            runtime = None
            if mods is not None:
                for mod in mods:  # alpha 0: tau = threshold, the op rows' thresholds; s: the planned sparsity
                    mod.set(tau[0, 0].item(), 0.0, s)
                runtime = median_call_us([lambda mod=mod, x=x: mod(x) for mod in mods[:n]], n)
            moved = kernels.bytes_moved(in_f, out, b, keep)
            spec = kernels.launch_spec(dtype, in_f, splits, b)
            row = {"shape": name, "in": in_f, "splits": splits, "dtype": str(dtype).replace("torch.", ""),
                   "batch": b, "sparsity": s, "union_keep": keep, "copies": n, "dense_us": dense,
                   "dense_nat_us": dense_nat, "dense_t_us": dense_t, "sparse_us": ours, "speedup": dense / ours,
                   "runtime_us": runtime,
                   "runtime_speedup": dense / runtime if runtime else None,
                   "dense_tbps": (nbytes + b * (in_f + out) * 2) / (dense * 1e-6) / 1e12,
                   "sparse_tbps": moved / (ours * 1e-6) / 1e12, "kernel": spec.name, "grid": list(spec.grid)}
            if tiles:
                row["tiles_us"] = {}
                y = torch.empty(b, out, dtype=dtype, device="cuda")
                for label, sp in variants(dtype, in_f, splits, b, spec):
                    row["tiles_us"][label] = median_call_us([lambda m=m, sp=sp, x=x, t=tau, y=y: run(sp, x, m, t, y)
                                                             for m in wt[:n]], n)
            rows.append(row)
    del w, wt, mods
    torch.cuda.empty_cache()
    return rows


def variants(dtype, in_f, splits, rows, spec, weights=None):
    """(label, spec): the chosen kernel, then other tilings (tile x cluster) and load depths / blocks per SM."""
    def variant_spec(tile, cluster, **tune):
        return kernels.launch_spec(dtype, in_f, splits, rows, tile=tile, cluster=cluster, tune=tune, weights=weights)

    out = [("chosen", spec)]
    for t, c in [(t, c) for t in (256, 128, 64, 32) for c in kernels.CLUSTERS]:
        if in_f >= 256 * c and (t, c) != (spec.tile, spec.cluster):
            out.append((f"{t}x{c}", variant_spec(t, c)))
    tuned = [(spec.tile, spec.cluster, u, p, b) for u, p, b in ((4, 1, 2), (8, 1, 2), (6, 2, 2), (4, 1, 3), (4, 2, 3),
                                                               (2, 1, 4))]
    tuned += [(t, c, 4, 1, 3) for t, c in ((128, 4), (64, 2), (128, 2), (64, 4)) if (t, c) != (spec.tile, spec.cluster)]
    if weights is not None and rows == 1:  # the 1-byte heuristic before 2026-12-02 (256 columns, macros by cluster)
        t, c = kernels.pick_tiling(splits, in_f, 1, 16, 132, 90, (256, *kernels.TILES))
        tuned.append((t, c, 8 if c <= 2 else 4, 2, 2 if c <= 2 else 3))
    for t, c, u, p, b in tuned:
        out.append((f"{t}x{c}u{u}p{p}b{b}", variant_spec(t, c, WSP_U=u, WSP_NPASS=p, WSP_MINB=b)))
    return out


def table(rows, copy_tbps) -> str:
    lines = []
    for dt in DTYPES.values():
        dts = str(dt).replace("torch.", "")
        for b in BATCHES:
            sub = [r for r in rows if r["dtype"] == dts and r["batch"] == b]
            if not sub:
                continue
            sps = sorted({r["sparsity"] for r in sub})
            lines.append(f"\n{dts} batch {b}: speedup over torch.matmul (dense us | TB/s at s=0.5)")
            lines.append(f"{'shape':<30}" + "".join(f"{'s=' + str(s):>7}" for s in sps) + f"{'dense us':>10}"
                         f"{'TB/s':>7}")
            for name in SHAPES:
                rs = {r["sparsity"]: r for r in sub if r["shape"] == name}
                if not rs:
                    continue
                mid = rs.get(0.5, next(iter(rs.values())))
                lines.append(f"{name:<30}" + "".join(f"{rs[s]['speedup']:>7.2f}" for s in sps)
                             + f"{mid['dense_us']:>10.1f}{mid['sparse_tbps']:>7.2f}")
    lines.append(f"\ncopy bandwidth (read + write): {copy_tbps:.2f} TB/s")
    return "\n".join(lines)


def bars(rows, read_tbps: float) -> list[str]:
    """The issue's bars (H200, bf16, batch 1, against torch.matmul in the same run), each with its physical bound:
    the speedup if the kernel read only the kept weight bytes at the fastest read measured here (the plain-read
    ceiling or the dense matmul's own bandwidth) and cost nothing else."""
    def row(shape, s):
        r = [r for r in rows if r["shape"] == shape and r["dtype"] == "bfloat16" and r["batch"] == 1
             and r["sparsity"] == s]
        return r[0] if r else None

    checks = []
    for shape in ("8B gate/up 4096->14336", "8B down 14336->4096"):
        checks += [(shape, 0.5, 2.0), (shape, 0.75, 3.0), (shape, 0.0, 0.95)]
    checks += [("70B gate/up 8192->28672", 0.5, 2.5), ("70B down 28672->8192", 0.5, 2.5)]
    lines = []
    for shape, s, bar in checks:
        r = row(shape, s)
        if r is None:
            continue
        kept = r["union_keep"] * r["in"] * sum(r["splits"]) * 2
        ceiling = max(read_tbps, r["dense_tbps"])  # cuBLAS may read faster than the plain-read kernel
        bound = r["dense_us"] / (kept / (ceiling * 1e12) * 1e6)
        got = r["runtime_speedup"] or r["speedup"]  # what SparseLinear runs (the dense path where tau = 0)
        lines.append(f"{'MET ' if got >= bar else 'MISS'} {shape} s={s} >= {bar}x: {got:.2f}x "
                     f"(op alone {r['speedup']:.2f}x; bound {bound:.2f}x)")
    return lines


Q_SHAPES = ["8B gate/up 4096->14336", "8B down 14336->4096", "8B qkv fused 4096->6144", "8B q/o 4096->4096",
            "8B gate+up fused 4096->28672", "70B gate/up 8192->28672", "70B down 28672->8192"]
Q_SPARSITIES = [0.0, 0.25, 0.5, 0.75]


def per_token(x: torch.Tensor, fmt: quant.WeightFormat, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x quantized per row (absmax / qmax, float32 scales [rows, 1]), zero-padded to `rows` rows."""
    scale = (x.float().abs().amax(1, keepdim=True) / fmt.qmax).clamp_min(1e-12)
    q = (x.float() / scale).clamp(-fmt.qmax, fmt.qmax)
    q = q.round().to(fmt.storage) if fmt.integer else q.to(fmt.storage)
    pad = (0, 0, 0, rows - x.shape[0])
    q = torch.nn.functional.pad(q.view(torch.int8), pad).view(fmt.storage)  # pad has no float8 kernel
    return q, torch.nn.functional.pad(scale, pad, value=1.0)


def dense_references(x, qs, scale, fmt) -> dict[str, list]:
    """name -> calls over the weight copies: the dense 1-byte GEMMs torch offers (activation quantization included)
    and torch.compile's fused weight-only linear (gpt-fast style)."""
    torch._dynamo.reset()  # a fresh compile per shape: past dynamo's recompile limit (8) the call would run eagerly
    compiled, sx16 = torch.compile(weight_only_linear, dynamic=False), scale.to(x.dtype)
    out = {"torch.compile weight-only (gpt-fast style)": [lambda q=q: compiled(x, q, sx16) for q in qs]}
    if fmt.integer:  # torch._int_mm: int8 x int8 -> int32, more than 16 rows
        def call(q):
            xq, sx = per_token(x, fmt, 32)
            return (torch._int_mm(xq, q.t()).float() * sx * scale)[:1].to(x.dtype)
        out["torch._int_mm, x per-token int8 (padded to 32 rows)"] = [lambda q=q: call(q) for q in qs]
        return out
    for rows in (1, 16):  # cuBLASLt may want row counts in multiples of 16
        def call(q, rows=rows):
            xq, sx = per_token(x, fmt, rows)
            return torch._scaled_mm(xq, q.t(), sx, scale[None, :], out_dtype=x.dtype)[:1]
        out[f"torch._scaled_mm, x per-token e4m3 ({rows} rows)"] = [lambda q=q, c=call: c(q) for q in qs]
    return out


def bench_quantized(fmt: quant.WeightFormat, copy: float, reps: int = 3) -> list[dict]:
    """One row per (shape, path): median over `reps` repetitions of the per-call median, and its physical bound."""
    rows = []
    for name in Q_SHAPES:
        in_f, splits = SHAPES[name]
        out = sum(splits)
        q, scale = quant.quantize(torch.randn(out, in_f, device="cuda").div_(in_f**0.5), fmt)
        n = copies(in_f * out * 2)
        qs = [q.clone() for _ in range(copies(in_f * out))]           # [out, in]: the dense references' layout
        wqs = [m.t().contiguous() for m in qs]                          # [in, out]: the kernel layout
        bf = [quant.dequantize(q, scale, torch.bfloat16) for _ in range(n)]
        x = torch.randn(1, in_f, device="cuda").to(torch.bfloat16)
        calls = {"torch.matmul bf16": ([lambda m=m, x=x: torch.matmul(x, m.t()) for m in bf], in_f * out * 2)}
        for label, fns in dense_references(x, qs, scale, fmt).items():
            try:
                fns[0]()
                calls[label] = (fns, in_f * out)
            except (RuntimeError, ValueError, AssertionError) as e:  # not offered here: said in the table
                rows.append({"format": fmt.name, "shape": name, "path": label, "error": str(e).splitlines()[0]})
        for sp in Q_SPARSITIES:
            tau = thresholds(sp, in_f, len(splits))
            keep = scores.keep(x, tau[0]).float().mean().item()
            fns = [lambda m=m, t=tau, x=x, s=scale, sp=splits: kernels.sparse_linear_q_op(x, m, s, t, None, sp)
                   for m in wqs]
            calls[f"ours s={sp}"] = (fns, kernels.bytes_moved(in_f, out, 1, keep, weights=fmt))
        for label, (fns, nbytes) in calls.items():
            us = statistics.median(median_call_us(fns, len(fns)) for _ in range(reps))
            rows.append({"format": fmt.name, "shape": name, "path": label, "us": us,
                         "bound_us": nbytes / copy * 1e6, "bytes": nbytes})
        del qs, wqs, bf
        torch.cuda.empty_cache()
    return rows


def tune_quantized(fmt: quant.WeightFormat, copy: float) -> list[dict]:
    """The quantized kernel's variants (tilings, load depths, blocks per SM) on every shape, batch 1: us each."""
    rows = []
    for name in Q_SHAPES:
        in_f, splits = SHAPES[name]
        out = sum(splits)
        q, scale = quant.quantize(torch.randn(out, in_f, device="cuda").div_(in_f**0.5), fmt)
        wqs = [q.t().contiguous() for _ in range(copies(in_f * out))]
        x = torch.randn(1, in_f, device="cuda").to(torch.bfloat16)
        y = torch.empty(1, out, dtype=torch.bfloat16, device="cuda")
        spec = kernels.launch_spec(torch.bfloat16, in_f, splits, 1, weights=fmt)
        for sp in Q_SPARSITIES:
            tau = thresholds(sp, in_f, len(splits))
            keep = scores.keep(x, tau[0]).float().mean().item()
            n = min(len(wqs), copies(keep * in_f * out))
            us = {}
            for label, v in variants(torch.bfloat16, in_f, splits, 1, spec, weights=fmt):
                us[label] = median_call_us([lambda m=m, v=v, t=tau, x=x, y=y, sc=scale: run(v, x, m, t, y, scale=sc)
                                            for m in wqs[:n]], n)
            rows.append({"format": fmt.name, "shape": name, "sparsity": sp, "kernel": spec.name, "variants_us": us,
                         "bound_us": kernels.bytes_moved(in_f, out, 1, keep, weights=fmt) / copy * 1e6})
        del wqs
        torch.cuda.empty_cache()
    return rows


def q_table(rows) -> str:
    """Per format and shape: each path's us, its bound, and the speedups over bf16 and the fastest dense reference."""
    lines = []
    for fmt in dict.fromkeys(r["format"] for r in rows):
        lines.append(f"\n{fmt} weights, bf16 x, batch 1: us [bound us] (x over bf16 matmul, x over the fastest dense "
                     f"{fmt} path: torch's or ours at s=0)")
        for name in Q_SHAPES:
            sub = [r for r in rows if r["format"] == fmt and r["shape"] == name]
            ok = [r for r in sub if "us" in r]
            if not ok:
                continue
            bf = next(r["us"] for r in ok if r["path"] == "torch.matmul bf16")
            dense_paths = ("torch._", "torch.compile", "ours s=0.0")
            refs = [r["us"] for r in ok if r["path"].startswith(dense_paths)]
            ref = min(refs) if refs else None
            lines.append(f"  {name}")
            for r in sub:
                if "error" in r:
                    lines.append(f"    {r['path']:<52} did not run: {r['error']}")
                    continue
                vs_ref = f"{ref / r['us']:.2f}x" if ref else "n/a"
                lines.append(f"    {r['path']:<52} {r['us']:8.1f} [{r['bound_us']:6.1f}]  ({bf / r['us']:.2f}x, "
                             f"{vs_ref})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--quick", action="store_true", help="bf16, batch 1 only")
    ap.add_argument("--weights", nargs="+", choices=["fp8", "int8"],
                    help="only the quantized table, for these weight formats")
    ap.add_argument("--tune", action="store_true", help="with --weights: also sweep the quantized kernel's variants "
                    "on the 8B shapes")
    ap.add_argument("--legacy-timing", action="store_true", help="graphs of 20 calls launched onto an idle GPU, the "
                    "way before 2026-12-03 (the graph's launch and start then count in every call: probe_timing.py)")
    args = ap.parse_args()
    global QUEUED, PER_GRAPH
    QUEUED, PER_GRAPH = (False, 20) if args.legacy_timing else (QUEUED, PER_GRAPH)
    torch.manual_seed(0)
    t0 = time.time()
    copy, read = ceilings()
    if args.weights:
        qrows = [r for w in args.weights for r in bench_quantized(quant.OPTIONS[w], copy)]
        tuned = [r for w in args.weights for r in tune_quantized(quant.OPTIONS[w], copy)] if args.tune else []
        with open(args.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"),
                       "torch": torch.__version__, "nvrtc": kernels.nvrtc_version(), "copy_tbps": copy / 1e12,
                       "read_tbps": read / 1e12, "timing": timing(), "quantized": qrows,
                       "quantized_variants": tuned,
                       "seconds": time.time() - t0}, f, indent=1)
        for r in tuned:
            best = min(r["variants_us"], key=r["variants_us"].get)
            print(f"  {r['format']} {r['shape']:<24} s={r['sparsity']:<4} bound {r['bound_us']:.1f} chosen "
                  f"{r['variants_us']['chosen']:.1f} best {best} {r['variants_us'][best]:.1f} | "
                  + " ".join(f"{k}:{v:.1f}" for k, v in r["variants_us"].items()))
        print(q_table(qrows) + f"\ncopy bandwidth (read + write): {copy / 1e12:.2f} TB/s")
        return
    tiny = torch.zeros(1, device="cuda")
    floor_us = median_call_us([tiny.zero_], 1)  # the smallest kernel, back to back in a graph
    copy_tbps, read_tbps = copy / 1e12, read / 1e12
    rows = []
    for dname, dt in DTYPES.items():
        if args.quick and dname != "bf16":
            continue
        for name, (in_f, splits) in SHAPES.items():
            rows += bench_shape(name, in_f, splits, dt, [1] if args.quick else BATCHES, SPARSITIES)
    # Variant sweep (bf16, batch 1): tilings, load depths and blocks per multiprocessor, to set the heuristics.
    sweep = []
    for name, (in_f, splits) in SHAPES.items():
        sweep += bench_shape(name, in_f, splits, torch.bfloat16, [1], [0.0, 0.5, 0.75, 0.98],
                             tiles=True)
    result = {"gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
              "nvrtc": kernels.nvrtc_version(), "driver": kernels.driver_version(), "copy_tbps": copy_tbps,
              "read_tbps": read_tbps, "timing": timing(), "tiny_kernel_us": floor_us,
              "rows": rows, "tile_sweep": sweep, "seconds": time.time() - t0}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print("variant sweep (bf16, batch 1): us per call; dense first; tile x cluster [u<loads> p<passes> b<blocks/SM>]")
    for r in sweep:
        print(f"  {r['shape']:<29} s={r['sparsity']:<4} {r['kernel'][9:]:<18} dense:{r['dense_us']:.1f} "
              + " ".join(f"{t}:{u:.1f}" for t, u in r["tiles_us"].items()))
    print(table(rows, copy_tbps) + f", plain read (sum): {read_tbps:.2f} TB/s; a one-element kernel in a graph: "
          f"{floor_us:.2f} us")
    print("\n" + "\n".join(bars(rows, read_tbps)))


if __name__ == "__main__":
    main()
