"""Human-facing output: fixed-width tables for the terminal, and plots (matplotlib, headless)."""

from __future__ import annotations

import re

from .files import write_atomic
from .models import projection


def table(headers: list[str], rows: list[list]) -> str:
    """A plain fixed-width table; floats at 4 significant digits."""
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def evaluation_table(r: dict) -> str:
    """Dense vs sparse, one row each, as `wisparse evaluate` prints it."""
    rows = [
        ["dense", 0.0, r["dense_ppl"], 0.0, 1.0],
        [f"sparse ({r['method']})", r["realized_sparsity"], r["ppl"], r["kl"], r["top1_agreement"]],
    ]
    head = f"{r['model']}  target sparsity {r['target_sparsity']}  on {r['tokens']} tokens of {r.get('text', 'text')}"
    return head + "\n" + table(["model", "sparsity", "ppl", "kl", "top1_agree"], rows)


def plot_allocation(plan: dict, path: str) -> str:
    """Per-block sparsity (param-weighted) and each projection's sparsity per block, from a plan dictionary:
    shows where the allocation put the budget, which a table of 200 linears does not."""
    import matplotlib  # only the plot needs it, and it takes a second to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks: dict[int, dict[str, tuple[float, int]]] = {}
    for name, lp in plan["layers"].items():
        m = re.search(r"\.(\d+)\.", name)
        b = int(m.group(1)) if m else 0
        blocks.setdefault(b, {})[projection(name)] = (lp["sparsity"], lp["shape"][0] * lp["shape"][1])
    idx = sorted(blocks)
    level = [sum(s * p for s, p in blocks[b].values()) / sum(p for _, p in blocks[b].values()) for b in idx]
    projs = list(dict.fromkeys(k for b in idx for k in blocks[b]))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    ax1.bar(idx, level, color="tab:blue")
    ax1.axhline(plan.get("budget", plan["target_sparsity"]), color="k", ls="--", lw=1,
                label=f"budget {plan.get('budget', plan['target_sparsity']):.3f}")
    ax1.set_ylabel("block sparsity\n(param-weighted)")
    ax1.set_ylim(0, 1)
    ax1.legend(loc="upper right")
    ax1.set_title(f"{plan['model'].get('source', '')}: {plan['method']} at target {plan['target_sparsity']}")
    # Projections with the same sparsity in every block (a shared input's q/k/v, gate/up) are one line, "q/k/v":
    # drawn separately they would hide each other.
    series: dict[tuple[float, ...], list[str]] = {}
    for k in projs:
        series.setdefault(tuple(blocks[b].get(k, (float("nan"), 0))[0] for b in idx), []).append(k)
    for values, names in series.items():
        ax2.plot(idx, values, marker="o", ms=3, label="/".join(names))
    ax2.set_ylabel("projection sparsity")
    ax2.set_xlabel("block")
    ax2.set_ylim(0, 1)
    ax2.legend(ncol=len(series), fontsize=8, loc="lower right")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=str(path).rsplit(".", 1)[-1] if "." in str(path) else "png",
                                               dpi=110))
    plt.close(fig)
    return path


def bench_table(result: dict) -> str:
    """Dense, [dense on the 1-byte weights,] sparse rows; speedups over dense (and over dense quantized)."""
    q = result.get("weights")
    name = {"fp8_e4m3": "fp8", "int8": "int8"}.get(q, q)
    extra = f" {'vs ' + name:>8}" if q else ""
    lines = [f"{'':>12} {'target':>7} {'realized':>9} {'tokens/s':>10} {'ms/step':>8} {'speedup':>8}{extra}"]
    dense = "dense" if not q else f"dense {result['dtype'].replace('bfloat16', 'bf16').replace('float16', 'f16')}"
    lines.append(f"{dense:>12} {'':>7} {'':>9} {result['dense_tokens_per_s']:>10.1f} "
                 f"{result['dense_ms_per_step']:>8.3f} {1.0:>8.2f}" + (f" {'':>8}" if q else ""))
    if q:
        tps = result["dense_q_tokens_per_s"]
        lines.append(f"{'dense ' + name:>12} {'':>7} {'':>9} {tps:>10.1f} {result['dense_q_ms_per_step']:>8.3f} "
                     f"{tps / result['dense_tokens_per_s']:>8.2f} {1.0:>8.2f}")
    paths = result.get("dense_q_paths", {})
    if len(paths) > 1:
        lines.append(f"{'':>12} dense {name} above: {result['dense_q_path']}, the faster of "
                     + "; ".join(f"{k} {v:.1f} tok/s" for k, v in paths.items()))
    for path, why in result.get("dense_q_failed", {}).items():
        lines.append(f"{'':>12} dense {name} reference {path} not timed: it failed to compile ({why})")
    for r in result["sparse"]:
        tail = f" {r['speedup_over_dense_q']:>8.2f}" if q else ""
        lines.append(f"{'sparse':>12} {r['target']:>7.2f} {r['realized']:>9.3f} {r['tokens_per_s']:>10.1f} "
                     f"{r['ms_per_step']:>8.3f} {r['speedup']:>8.2f}{tail}")
    if "lm_head" in result:
        lines.append(head_line(result["lm_head"], dense, f"dense {name}"))
    return "\n".join(lines)


def head_line(paths: dict, dense: str, dense_q: str) -> str:
    """"lm_head: bfloat16 (cuBLAS) in dense bf16; fp8_e4m3 (our kernel, threshold 0) in dense fp8 and sparse"."""
    rows = {"dense": dense, "dense_q": dense_q, "sparse": "sparse"}
    where: dict[str, list[str]] = {}
    for key, row in rows.items():
        if key in paths:
            where.setdefault(paths[key], []).append(row)
    return "lm_head: " + "; ".join(f"{what} in {' and '.join(r)}" for what, r in where.items())
