"""Human-facing output: fixed-width tables for the terminal, and plots (matplotlib, headless)."""

from __future__ import annotations


def table(headers: list[str], rows: list[list]) -> str:
    """A plain fixed-width table; floats at 4 significant digits."""
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def evaluation_table(r: dict) -> str:
    """Dense vs sparse, one row each, as `wisparse evaluate` prints it."""
    rows = [
        ["dense", 0.0, r["dense_ppl"], 0.0, 1.0],
        [f"sparse ({r['method']})", r["realized_sparsity"], r["ppl"], r["kl"], r["top1_agreement"]],
    ]
    head = f"{r['model']}  target sparsity {r['target_sparsity']}  on {r['tokens']} tokens of {r.get('text', 'text')}"
    return head + "\n" + table(["model", "sparsity", "ppl", "kl", "top1_agree"], rows)
