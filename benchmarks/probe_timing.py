"""How the kernel benchmarks' clock is read: per-call µs of one CUDA graph replay, launched onto an idle GPU or queued.

bench_kernels.py times a graph of calls between two CUDA events. Before 2026-12-03 (now --legacy-timing) the graph
held 20+ calls and was launched onto an idle GPU: the start event fires as soon as it is queued and the graph's calls
begin only once the host has launched the graph, so that launch, a few µs, is spread over the 20 calls of every
figure, the reference's included. Queued behind a sleep kernel, the replay and the stop event are already waiting when
the start event fires. This probe times the same calls both ways, with 20 and with 200 calls a graph, in alternating
rounds, on the cells of issue 14's kernel bars (and an empty kernel): if the launch is what the idle way adds, idle-20
exceeds queued-20 by about its share, idle-200 by a tenth of that, and queued-20 exceeds queued-200 only by the
graph's own start on the GPU (measured: ~2 µs a graph). bench_kernels.py's clock since then is queued-200.

    python benchmarks/probe_timing.py --json OUT.json [--reps 5] [--sparsity 0.5]
"""

from __future__ import annotations

import statistics
import time

import torch
from bench_floor import probe_parser, probe_start, save_rows
from bench_kernels import SHAPES, ceilings, copies, median_call_us, thresholds

from wisparse_export import kernels, quant

CELLS = ("8B gate/up 4096->14336", "8B down 14336->4096")
METHODS = {"idle-20": (False, 20), "queued-20": (True, 20), "idle-200": (False, 200), "queued-200": (True, 200)}


def timed(calls: list, n: int, reps: int) -> dict[str, float]:
    """Median over `reps` rounds of each method's graph-replay median; the methods alternate within a round."""
    got: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(reps):
        for m, (queued, per_graph) in METHODS.items():
            got[m].append(median_call_us(calls, n, per_graph=per_graph, queued=queued))
    return {m: statistics.median(v) for m, v in got.items()}


def cell_calls(name: str, fmt: quant.WeightFormat | None, sparsity: float) -> dict[str, tuple[list, int]]:
    """The op on rotated weight copies (bf16 or 1-byte) and torch.matmul bf16 (nn.Linear's layout) on rotated copies."""
    in_f, splits = SHAPES[name]
    out = sum(splits)
    w = torch.randn(out, in_f, device="cuda").div_(in_f**0.5)
    x = torch.randn(1, in_f, device="cuda").to(torch.bfloat16)
    tau = thresholds(sparsity, in_f, len(splits))
    n_bf = copies(in_f * out * 2)
    bf = [w.to(torch.bfloat16) for _ in range(n_bf)]
    calls = {"torch.matmul bf16": ([lambda m=m: torch.matmul(x, m.t()) for m in bf], n_bf)}
    if fmt is None:
        n = copies(in_f * out * 2 * (1 - sparsity))
        wt = [bf[0].t().contiguous() for _ in range(n)]
        calls[f"ours bf16 s={sparsity}"] = ([lambda m=m: kernels.sparse_linear_op(x, m, tau, None, splits)
                                            for m in wt], n)
    else:
        q, scale = quant.quantize(w, fmt)
        n = copies(in_f * out)
        wq = [q.t().contiguous() for _ in range(n)]
        calls[f"ours {fmt.name} s={sparsity}"] = ([lambda m=m: kernels.sparse_linear_q_op(x, m, scale, tau, None,
                                                                                          splits) for m in wq], n)
    return calls


def main() -> None:
    ap = probe_parser(__doc__)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.set_defaults(reps=5)
    args, t0 = probe_start(ap, "probe_timing.py")
    copy, _ = ceilings()  # also brings the GPU's clocks up before the first cell
    rows = []
    tiny = torch.zeros(1, device="cuda")
    rows.append({"cell": "empty kernel", "path": "tiny.zero_()", **timed([tiny.zero_], 1, args.reps)})
    for fmt in (quant.FORMATS["fp8_e4m3"], quant.FORMATS["int8"], None):
        for name in CELLS:
            for path, (calls, n) in cell_calls(name, fmt, args.sparsity).items():
                rows.append({"cell": name, "path": path, **timed(calls, n, args.reps)})
            torch.cuda.empty_cache()
    save_rows(args.json, rows, t0, sparsity=args.sparsity, copy_tbps=copy / 1e12, timing="four clocks: each row")
    print(f"{'cell':<24} {'path':<26} " + " ".join(f"{m:>10}" for m in METHODS) + "   (us a call)")
    ref: dict = {}
    for r in rows:
        if r["path"] == "torch.matmul bf16":
            ref = r
        ratio = "" if r["path"] == "torch.matmul bf16" or not ref else "   x bf16: " + " ".join(
            f"{ref[m] / r[m]:.3f}" for m in METHODS)
        print(f"{r['cell'][:24]:<24} {r['path']:<26} " + " ".join(f"{r[m]:10.2f}" for m in METHODS) + ratio)
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
