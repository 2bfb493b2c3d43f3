"""Issue 15's fused decode path on the 8B shapes, one GPU run: each linear's four ways, beside its bandwidth bound.

For 8B gate+up (4096 -> [14336, 14336]), down (14336 -> [4096]) and q/k/v (4096 -> [4096, 1024, 1024]), weights
bf16 and fp8_e4m3, sparsity 0 / 0.5 / 0.75, batch 1 (`--rows`), per call:
  today     the sparse kernel of today's runtime (`sparse_linear_op` / `sparse_linear_q_op`: launch_spec, mask and
            compaction in every block) on the producer's output v;
  list      the list GEMV (`list_spec`) alone, on the list `kernels.compact` makes of v;
  producer  the producer alone (`producer_spec`: RMSNorm for the 4096 inputs, SiLU(gate) * up for down);
  fused     producer then list GEMV, back to back, the GEMV reading the list the producer just wrote.
Each figure is the median of `--reps` repetitions of bench_kernels' graph-replay median, weights rotated over
bench_kernels' `copies` of the kept bytes. The bound is the fewest bytes a path must move (`path_bytes`) over the
fastest read measured in the same run: the plain-read ceiling (bench_kernels' `ceilings`) or cuBLAS's dense bf16
bandwidth on the same shape, whichever is higher (as bench_kernels' bars take it). The issue's bar is read from the
`list` rows on the MLP shapes: >= 85% of the bound at 0.5, >= 75% at 0.75.

    python benchmarks/bench_fused.py --json OUT.json [--weights bf16 fp8] [--reps 3] [--rows 1]

--ablate (MLP shapes only): where the list GEMV's extra microseconds over today's kernel go. Beside today's kernel
and the list bound, every list GEMV variant of `list_ablations` (Stream-K as shipped, without its partial sums'
traffic, without any fix-up, with one list chunk per segment, one block per SM; the cluster split (no Stream-K),
with short list chunks, without clusters, with 8 loads in flight) and every producer variant of
`PRODUCER_ABLATIONS` (counts but no list, v alone, other cluster sizes). Variants that compute a wrong y by design
(timing only) have `ok` null in the JSON and `~` in the table; the others are checked against today's kernel
first (`*` if wrong). Then `attribution` prints the differences that answer the question.

    python benchmarks/bench_fused.py --ablate --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from bench_kernels import ceilings, copies, median_call_us

from wisparse_export import kernels, quant

SHAPES = {  # name: (in, splits, producer kind)
    "8B gate+up 4096->[14336,14336]": (4096, [14336, 14336], "rmsnorm"),
    "8B down 14336->[4096]": (14336, [4096], "silu_mul"),
    "8B qkv 4096->[4096,1024,1024]": (4096, [4096, 1024, 1024], "rmsnorm"),
}
MLP = ("8B gate+up 4096->[14336,14336]", "8B down 14336->[4096]")  # the bar is on these
WEIGHTS = {"bf16": None, "fp8": "fp8_e4m3"}
SPARSITIES = (0.0, 0.5, 0.75)
BARS = {0.5: 85.0, 0.75: 75.0}  # sparsity -> % of the bound the list GEMV must reach
PATHS = ("today", "list", "producer", "fused")
EPS = 1e-5
DTYPE = torch.bfloat16


def list_rows(n_rows: int) -> int:
    """Rows per list entry: the smallest of kernels.LIST_ROWS holding n_rows."""
    return next(r for r in kernels.LIST_ROWS if r >= n_rows)


def gemv_bytes(splits: Sequence[int], counts: Sequence[int], n_rows: int, weights: str | None, input_bytes: int,
               elem: int = 2) -> int:
    """Fewest bytes a sparse GEMV moves: the kept weight rows of each projection (1 byte a weight and a float32
    scale per output column for quantized weights), its input (`input_bytes`), and y."""
    w_elem = 1 if weights else elem
    out = sum(splits)
    kept = sum(c * s for c, s in zip(counts, splits, strict=True)) * w_elem
    return kept + (4 * out if weights else 0) + input_bytes + n_rows * out * elem


def list_bytes(counts: Sequence[int], n_rows: int, elem: int = 2) -> int:
    """A producer's list: per kept entry its channel (int32) and the R masked values; one int32 count a projection."""
    return sum(counts) * (4 + list_rows(n_rows) * elem) + 4 * len(counts)


def path_bytes(in_f: int, splits: Sequence[int], kind: str, counts: Sequence[int], n_rows: int,
               weights: str | None, elem: int = 2) -> dict[str, int]:
    """Fewest bytes each path moves (PATHS). today: x and one tau row per projection in; list: the list in;
    producer: its input (x and gamma, or [gate | up]) and tau in, the list (and RMSNorm's xn) out; fused: both."""
    p = len(splits)
    x_in = n_rows * in_f * elem
    today = gemv_bytes(splits, counts, n_rows, weights, x_in + p * in_f * 4, elem)
    gemv = gemv_bytes(splits, counts, n_rows, weights, list_bytes(counts, n_rows, elem), elem)
    if kind == "rmsnorm":
        produced = x_in + in_f * elem + x_in  # x, gamma in; xn out
    else:
        produced = 2 * x_in  # [gate | up] in
    producer = produced + p * in_f * 4 + list_bytes(counts, n_rows, elem)
    return {"today": today, "list": gemv, "producer": producer, "fused": producer + gemv}


def pct_of_bound(nbytes: int, us: float, bytes_per_s: float) -> tuple[float, float]:
    """(bound in us, % of it reached): the bytes at the ceiling, over the measured time."""
    bound = nbytes / bytes_per_s * 1e6
    return bound, 100.0 * bound / us


@dataclass
class Case:
    """One measurement's data: the producer's inputs, its output v, tau [P, in] and the list `compact` makes."""

    inputs: list[torch.Tensor]
    v: torch.Tensor
    tau: torch.Tensor
    lst: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def make_case(in_f: int, splits: Sequence[int], kind: str, sparsity: float, n_rows: int = 1,
              device: str = "cuda", seed: int = 0) -> Case:
    """Random producer inputs; tau = the `sparsity` quantile of |v| (every projection the same), so each projection
    keeps about 1 - sparsity of the channels (the union over rows keeps more)."""
    g = torch.Generator(device=device).manual_seed(seed)
    if kind == "rmsnorm":
        x = torch.randn(n_rows, in_f, device=device, generator=g).to(DTYPE)
        gamma = (1 + 0.2 * torch.randn(in_f, device=device, generator=g)).to(DTYPE)
        inputs, v = [x, gamma], kernels.rms_norm(x, gamma, EPS)
    else:
        h = torch.randn(n_rows, 2 * in_f, device=device, generator=g).to(DTYPE)
        inputs, v = [h], kernels.silu_mul(h)
    q = torch.quantile(v.float().abs().flatten(), sparsity).item() if sparsity else 0.0
    tau = torch.full((len(splits), in_f), q, device=device)
    return Case(inputs, v, tau, kernels.compact(v, tau, list_rows(n_rows)))


def specs(in_f: int, splits: Sequence[int], kind: str, weights: str | None, n_rows: int, sms: int, arch: int
          ) -> tuple[kernels.LaunchSpec, kernels.LaunchSpec]:
    """The list GEMV's and the producer's launch specs (one R for both: the list's rows)."""
    rows = list_rows(n_rows)
    gemv = kernels.list_spec(DTYPE, in_f, splits, n_rows, rows_per_block=rows, weights=weights, sms=sms, arch=arch)
    prod = kernels.producer_spec(DTYPE, in_f, n_rows, kind=kind, projections=len(splits), eps=EPS,
                                 rows_per_block=rows, arch=arch)
    return gemv, prod


def _weights(in_f: int, out: int, weights: str | None, n: int) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """n copies of one random weight in the kernel layout [in, out] (bf16, or the 1-byte form and its scales)."""
    w = torch.randn(out, in_f, device="cuda").div_(in_f**0.5)
    if weights is None:
        wt = w.to(DTYPE).t().contiguous()
        return [wt] + [wt.clone() for _ in range(n - 1)], None
    q, scale = quant.quantize(w, quant.FORMATS[weights])
    wq = q.t().contiguous()
    return [wq] + [wq.clone() for _ in range(n - 1)], scale


class Launcher:
    """The producer and list GEMV launches of one case, on static buffers (what a CUDA graph captures)."""

    def __init__(self, case: Case, gemv: kernels.LaunchSpec, prod: kernels.LaunchSpec, scale, n_rows: int):
        p, k = case.tau.shape
        dev = case.v.device
        self.case, self.gemv, self.prod, self.scale = case, gemv, prod, scale
        self.splits = [s for s in gemv.args[3:] if s]
        self.idx = torch.zeros(p, k, dtype=torch.int32, device=dev)
        self.vals = torch.zeros(p, k, gemv.rows_per_block, dtype=DTYPE, device=dev)
        self.count = torch.zeros(p, dtype=torch.int32, device=dev)
        self.xn = torch.empty(n_rows, k, dtype=DTYPE, device=dev)
        self.ws = torch.empty(gemv.workspace, device=dev)
        self.sem = torch.zeros(gemv.semaphores, dtype=torch.int32, device=dev)  # zeroed once
        self.y = torch.empty(n_rows, sum(gemv.args[3:]), dtype=DTYPE, device=dev)

    def producer(self) -> None:
        outs = ([self.xn] if self.prod.name.startswith("wsp_rmsnorm") else []) + [self.idx, self.vals, self.count]
        kernels.launch(self.prod, [t.data_ptr() for t in (*self.case.inputs, self.case.tau)], outs[0].data_ptr(),
                       torch.cuda.current_stream().cuda_stream, trailing=[t.data_ptr() for t in outs[1:]])

    def gemv_on(self, lst, w: torch.Tensor) -> None:
        ptrs = [t.data_ptr() for t in (*lst, w)] + ([self.scale.data_ptr()] if self.scale is not None else [])
        kernels.launch(self.gemv, ptrs, self.y.data_ptr(), torch.cuda.current_stream().cuda_stream,
                       trailing=[self.ws.data_ptr(), self.sem.data_ptr()])

    def check(self, w: torch.Tensor) -> None:
        """The list the producer writes is compact's; producer -> GEMV gives today's kernel's y (fp32 sums in
        another order: a few bf16 ulps)."""
        self.fused(w)
        torch.cuda.synchronize()
        v = self.xn if self.prod.name.startswith("wsp_rmsnorm") else self.case.v  # its own RMSNorm: rsqrtf's ulp
        want = kernels.compact(v, self.case.tau, self.gemv.rows_per_block)[2]
        today = self.today(w)
        if not torch.equal(self.count, want):
            raise RuntimeError(f"{self.prod.name}: counts {self.count.tolist()} != {want.tolist()}")
        if not torch.allclose(self.y.float(), today.float(), rtol=2e-2, atol=2e-2 * today.float().abs().max()):
            raise RuntimeError(f"{self.gemv.name}: producer -> list GEMV differs from today's kernel")

    def today(self, w: torch.Tensor) -> torch.Tensor:
        """Today's sparse kernel on v (mask and compaction in every block)."""
        c = self.case
        if self.scale is None:
            return kernels.sparse_linear_op(c.v, w, c.tau, None, self.splits)
        return kernels.sparse_linear_q_op(c.v, w, self.scale, c.tau, None, self.splits)

    def fused(self, w: torch.Tensor) -> None:
        self.producer()
        self.gemv_on((self.idx, self.vals, self.count), w)

    def calls(self, wts: list[torch.Tensor]) -> dict[str, tuple[list, int]]:
        """Path -> (calls over the weight copies, copies); the producer reads no weight: one call."""
        return {"today": ([lambda m=m: self.today(m) for m in wts], len(wts)),
                "list": ([lambda m=m: self.gemv_on(self.case.lst, m) for m in wts], len(wts)),
                "producer": ([self.producer], 1),
                "fused": ([lambda m=m: self.fused(m) for m in wts], len(wts))}


def sparsity_case(in_f: int, splits: Sequence[int], kind: str, s: float, n_rows: int, w_elem: int, n_max: int
                  ) -> tuple[Case, list[int], int]:
    """The case at sparsity s, its kept counts per projection and the weight copies its kept bytes need (<= n_max)."""
    case = make_case(in_f, splits, kind, s, n_rows)
    counts = case.lst[2].tolist()
    return case, counts, min(n_max, copies(sum(c * sp for c, sp in zip(counts, splits, strict=True)) * w_elem))


def dense_ceiling(in_f: int, out: int, n_rows: int, read_bps: float) -> tuple[float, float]:
    """(cuBLAS's dense bf16 us on the shape, the ceiling in bytes/s): the faster of the plain read and that matmul's
    bandwidth, weights rotated over `copies`."""
    dense_w = [torch.randn(out, in_f, device="cuda").to(DTYPE) for _ in range(copies(in_f * out * 2))]
    xd = torch.randn(n_rows, in_f, device="cuda").to(DTYPE)
    dense_us = median_call_us([lambda m=m: torch.matmul(xd, m.t()) for m in dense_w], len(dense_w))
    dense_bps = (in_f * out * 2 + n_rows * (in_f + out) * 2) / (dense_us * 1e-6)
    return dense_us, max(read_bps, dense_bps)


def bench_shape(name: str, weights: str | None, n_rows: int, reps: int, read_bps: float, sparsities) -> list[dict]:
    """Rows for one shape and weight format: every sparsity, every path, with bytes, bound and % of bound."""
    in_f, splits, kind = SHAPES[name]
    out = sum(splits)
    w_elem = 1 if weights else 2
    dev = torch.device("cuda")
    sms, arch = kernels.sm_count(dev), kernels.device_arch(dev)
    n_max = copies(in_f * out * w_elem * (1 - max(sparsities)))
    wts, scale = _weights(in_f, out, weights, n_max)
    dense_us, ceiling = dense_ceiling(in_f, out, n_rows, read_bps)
    rows = []
    for s in sparsities:
        case, counts, n = sparsity_case(in_f, splits, kind, s, n_rows, w_elem, n_max)
        gemv, prod = specs(in_f, splits, kind, weights, n_rows, sms, arch)
        run = Launcher(case, gemv, prod, scale, n_rows)
        run.check(wts[0])
        nbytes = path_bytes(in_f, splits, kind, counts, n_rows, weights)
        row = {"shape": name, "in": in_f, "splits": splits, "producer": kind, "weights": weights or "bf16",
               "batch": n_rows, "sparsity": s, "counts": counts, "keep": sum(counts) / (len(counts) * in_f),
               "copies": n, "dense_bf16_us": dense_us, "ceiling_tbps": ceiling / 1e12, "list_kernel": gemv.name,
               "producer_kernel": prod.name}
        for path, (fns, k) in run.calls(wts[:n]).items():
            us = statistics.median(median_call_us(fns, k) for _ in range(reps))
            bound, pct = pct_of_bound(nbytes[path], us, ceiling)
            row[path] = {"us": us, "bytes": nbytes[path], "bound_us": bound, "pct_of_bound": pct}
        rows.append(row)
    del wts
    torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'shape':<32}{'w':>5}{'s':>6}" + "".join(f"{p + ' us [bound] %':>26}" for p in PATHS)
             + f"{'dense bf16':>11}"]
    for r in rows:
        cells = "".join(f"{r[p]['us']:>10.1f} [{r[p]['bound_us']:6.1f}] {r[p]['pct_of_bound']:4.0f}%" for p in PATHS)
        lines.append(f"{r['shape']:<32}{r['weights']:>5}{r['sparsity']:>6}{cells}{r['dense_bf16_us']:>11.1f}")
    return "\n".join(lines)


def bars(rows: list[dict]) -> list[str]:
    """The issue's bar, per MLP shape, weight format and sparsity: the list GEMV's % of its bound (fused beside)."""
    out = []
    for r in rows:
        bar = BARS.get(r["sparsity"])
        if bar is None or r["shape"] not in MLP or r["batch"] != 1:
            continue
        got = r["list"]["pct_of_bound"]
        out.append(f"{'MET ' if got >= bar else 'MISS'} {r['shape']} {r['weights']} s={r['sparsity']} >= {bar:.0f}% "
                   f"of bound: list GEMV {got:.1f}% (today {r['today']['pct_of_bound']:.1f}%, producer + list "
                   f"{r['fused']['pct_of_bound']:.1f}%)")
    return out


PRODUCER_ABLATIONS = {  # label: producer_spec keywords (bench_fused --ablate)
    "prod": {}, "p-count": {"tune": {"WSP_PMODE": 1}}, "p-v": {"tune": {"WSP_PMODE": 2}},
    "p-c1": {"cluster": 1}, "p-c8": {"cluster": 8},
}
CORRECT_PRODUCERS = ("prod", "p-count", "p-c1", "p-c8")  # write the counts; p-v writes none


def list_ablations(n_rows: int, tile: int, sms: int) -> dict[str, tuple[dict, bool]]:
    """List GEMV variants of --ablate: label -> (list_spec keywords, whether its y is correct). `tile`: the
    Stream-K spec's (widest) tile, which the cluster split without clusters (cl-c1) also takes: one block per tile."""
    kl = {1: 4096, 2: 2048}.get(list_rows(n_rows))  # the longest list chunk shared memory holds beside Stream-K's red
    out = {"sk": ({}, True), "sk-noPart": ({"tune": {"WSP_FIXUP": 1}}, False),
           "sk-noFix": ({"tune": {"WSP_FIXUP": 2}}, False), "sk-1/SM": ({"blocks": sms}, True)}
    if kl:
        out["sk-KL"] = ({"tune": {"WSP_KL": kl}}, True)
        out["sk-noFix-KL"] = ({"tune": {"WSP_FIXUP": 2, "WSP_KL": kl}}, False)
    out.update({"cl": ({"split": "cluster"}, True), "cl-KL1k": ({"split": "cluster", "tune": {"WSP_KL": 1024}}, True),
                "cl-c1": ({"split": "cluster", "cluster": 1, "tile": tile}, True)})
    if kl:  # 8 loads in flight and 2 blocks per SM whatever the cluster (the default takes 4 and 3 for C >= 4)
        out["cl-U8"] = ({"split": "cluster", "tune": {"WSP_U": 8, "WSP_MINB": 2}}, True)
    return out


def _same(y: torch.Tensor, want: torch.Tensor) -> bool:
    """fp32 sums in another order: a few bf16 ulps (as Launcher.check)."""
    return torch.allclose(y.float(), want.float(), rtol=2e-2, atol=2e-2 * want.float().abs().max().item())


def _time(fns: list, k: int, reps: int, per_graph: int | None = None) -> float:
    return statistics.median(median_call_us(fns, k, per_graph=per_graph) for _ in range(reps))


def ablate_cell(case: Case, in_f: int, splits: Sequence[int], kind: str, weights: str | None, n_rows: int,
                wts: list[torch.Tensor], scale, reps: int) -> dict:
    """Today's kernel, every list GEMV variant and every producer variant on one case: us, kernel, correct."""
    dev = torch.device("cuda")
    sms, arch = kernels.sm_count(dev), kernels.device_arch(dev)
    gemv, prod = specs(in_f, splits, kind, weights, n_rows, sms, arch)
    base = Launcher(case, gemv, prod, scale, n_rows)
    today = base.today(wts[0])
    cell = {"today_us": _time([lambda m=m: base.today(m) for m in wts], len(wts), reps), "list": {}, "producer": {}}
    for label, (kw, correct) in list_ablations(n_rows, gemv.tile, sms).items():
        spec = kernels.list_spec(DTYPE, in_f, splits, n_rows, rows_per_block=gemv.rows_per_block, weights=weights,
                                 sms=sms, arch=arch, **kw)
        run = Launcher(case, spec, prod, scale, n_rows)
        run.y.fill_(float("nan"))  # an output the variant leaves unwritten fails the check
        run.gemv_on(case.lst, wts[0])
        torch.cuda.synchronize()
        ok = _same(run.y, today) if correct else None
        us = _time([lambda m=m, r=run: r.gemv_on(case.lst, m) for m in wts], len(wts), reps)
        cell["list"][label] = {"us": us, "kernel": spec.name, "grid": spec.grid[0], "ok": ok}
    for label, kw in PRODUCER_ABLATIONS.items():
        spec = kernels.producer_spec(DTYPE, in_f, n_rows, kind=kind, projections=len(splits), eps=EPS,
                                     rows_per_block=prod.rows_per_block, arch=arch, **kw)
        run = Launcher(case, gemv, spec, scale, n_rows)
        run.producer()
        torch.cuda.synchronize()
        v = run.xn if kind == "rmsnorm" else case.v  # its own RMSNorm: rsqrtf may move a value by one ulp
        want = kernels.compact(v, case.tau, prod.rows_per_block)[2]
        ok = torch.equal(run.count, want) if label in CORRECT_PRODUCERS else None
        cell["producer"][label] = {"us": _time([run.producer], 1, reps), "kernel": spec.name, "ok": ok}
    return cell


def bench_ablate(name: str, weights: str | None, n_rows: int, reps: int, read_bps: float, sparsities) -> list[dict]:
    """--ablate rows for one MLP shape and weight format: every sparsity, with the list bound and % of it."""
    in_f, splits, kind = SHAPES[name]
    out = sum(splits)
    w_elem = 1 if weights else 2
    n_max = copies(in_f * out * w_elem * (1 - max(sparsities)))
    wts, scale = _weights(in_f, out, weights, n_max)
    rows = []
    for s in sparsities:
        case, counts, n = sparsity_case(in_f, splits, kind, s, n_rows, w_elem, n_max)
        cell = ablate_cell(case, in_f, splits, kind, weights, n_rows, wts[:n], scale, reps)
        nbytes = path_bytes(in_f, splits, kind, counts, n_rows, weights)
        bound, _ = pct_of_bound(nbytes["list"], 1.0, read_bps)
        for v in cell["list"].values():
            v["pct_of_bound"] = 100.0 * bound / v["us"]
        rows.append({"shape": name, "weights": weights or "bf16", "batch": n_rows, "sparsity": s, "counts": counts,
                     "copies": n, "list_bound_us": bound, "today_bound_us": pct_of_bound(nbytes["today"], 1.0,
                                                                                          read_bps)[0], **cell})
    del wts
    torch.cuda.empty_cache()
    return rows


ATTRIBUTION = (  # (what, minuend, subtrahend): list GEMV variants (or "today") whose difference isolates it
    ("fix-up partials (ws writes, last arriver's reads)", "sk", "sk-noPart"),
    ("fix-up arrival (barriers, fences, atomics)", "sk-noPart", "sk-noFix"),
    ("list chunks of 1024 (restarts)", "sk-noFix", "sk-noFix-KL"),
    ("Stream-K stream alone vs today's kernel", "sk-noFix-KL", "today"),
    ("Stream-K as shipped vs today's kernel", "sk", "today"),
    ("cluster split vs today's kernel", "cl", "today"),
    ("cluster split: list chunks of 1024", "cl-KL1k", "cl"),
)


def ablation_table(rows: list[dict]) -> str:
    """us per variant (list GEMV, then producer), the list bound, then the attribution differences per cell."""
    labels = list(rows[0]["list"]) if rows else []
    plabels = list(PRODUCER_ABLATIONS)
    head = f"{'8B shape':<20}{'w':>5}{'s':>5}{'bound':>7}{'today':>7}" + "".join(f"{x:>12}" for x in labels)
    lines = [head + " |" + "".join(f"{x:>8}" for x in plabels)]
    for r in rows:
        cells = "".join(f"{r['list'][x]['us']:>7.1f}{_mark(r['list'][x]['ok'])}{r['list'][x]['pct_of_bound']:3.0f}%"
                        for x in labels)
        prods = "".join(f"{r['producer'][x]['us']:>7.1f}{_mark(r['producer'][x]['ok'])}" for x in plabels)
        lines.append(f"{r['shape'].split()[1]:<20}{r['weights'][:4]:>5}{r['sparsity']:>5}{r['list_bound_us']:>7.1f}"
                     f"{r['today_us']:>7.1f}{cells} |{prods}")
    lines.append("us and % of the list bound; * = checked against today's kernel and wrong, ~ = wrong by design")
    lines.append("\nattribution, us (a - b) per cell, same order as above:")
    for what, a, b in ATTRIBUTION:
        got = [_us(r, a) - _us(r, b) for r in rows if _us(r, a) is not None and _us(r, b) is not None]
        lines.append(f"  {what:<52}" + " ".join(f"{d:5.1f}" for d in got))
    return "\n".join(lines)


def _mark(ok: bool | None) -> str:
    return "~" if ok is None else " " if ok else "*"


def _us(row: dict, label: str) -> float | None:
    if label == "today":
        return row["today_us"]
    v = row["list"].get(label)
    return v["us"] if v else None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--weights", nargs="+", choices=list(WEIGHTS), default=list(WEIGHTS))
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each graph-replay median (median taken)")
    ap.add_argument("--rows", type=int, default=1, choices=range(1, kernels.LIST_ROWS[-1] + 1),
                    help="decode rows (batch)")
    ap.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    ap.add_argument("--ablate", action="store_true", help="the list GEMV and producer variants on the MLP shapes")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    t0 = time.time()
    copy, read = ceilings()
    bench, names = (bench_ablate, MLP) if args.ablate else (bench_shape, SHAPES)
    rows = [r for w in args.weights for name in names
            for r in bench(name, WEIGHTS[w], args.rows, args.reps, read, args.sparsities)]
    with open(args.json, "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                   "nvrtc": kernels.nvrtc_version(), "copy_tbps": copy / 1e12, "read_tbps": read / 1e12,
                   "rows": rows, "seconds": time.time() - t0}, f, indent=1)
    if args.ablate:
        print(ablation_table(rows))
        print(f"plain read {read / 1e12:.2f} TB/s, copy {copy / 1e12:.2f} TB/s; bound = bytes / plain read")
        print(f"{time.time() - t0:.0f} s")
        return
    print(table(rows))
    print(f"plain read {read / 1e12:.2f} TB/s, copy {copy / 1e12:.2f} TB/s; bound = bytes / max(read, dense bf16)")
    print("\n".join(bars(rows)) + f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
