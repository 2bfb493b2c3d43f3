"""Accuracy table: teal / wina / wisparse at several sparsities on held-out text, through the library the CLI uses.

The model is loaded once and the dense score statistics are collected once (alphas 0, 0.5, 1 serve all three
methods); each plan goes through the same allocation and refit as `wisparse calibrate`, is saved as a plan file,
and all plans are evaluated on the same evaluation tokens with one dense pass per batch shared among them.

    python benchmarks/accuracy.py --out docs/accuracy --search-budget fast
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from wisparse_export import data
from wisparse_export.calibration import METHOD_ALPHA, collect, make_plan, refit, uniform
from wisparse_export.evaluate import Metrics, weighted_sparsity
from wisparse_export.models import load_model
from wisparse_export.plan import save_plan
from wisparse_export.report import plot_allocation, table
from wisparse_export.runtime import apply, remove, sparse_linears, track_sparsity
from wisparse_export.search import allocate


def build_plans(loaded, out: Path, sparsities: list[float], methods: list[str], args) -> dict:
    text = data.load_text([], "calibration")
    seqs = data.sequences(loaded.tokenizer, text, args.seq_len, args.calib_tokens, seed=args.seed, shuffle=True)
    t0 = time.perf_counter()
    stats = collect(loaded.model, loaded.blocks, seqs, (0.0, 0.5, 1.0), progress=True)
    print(f"dense statistics: {time.perf_counter() - t0:.0f} s", flush=True)
    settings = {"text": text.description, "sources": None, "tokens": stats.tokens, "seq_len": args.seq_len,
                "seed": args.seed}
    plans, seconds = {}, {}
    for s in sparsities:
        for method in methods:
            t0 = time.perf_counter()
            search = None
            if method == "wisparse":
                knobs = {"budget": args.search_budget, "generations": args.generations,
                         "checkpoint": str(out / f"wisparse-{s}.search.json")}
                allocation, search = allocate(loaded, stats, seqs, s, knobs, progress=True)
            else:
                allocation = uniform(stats, s, METHOD_ALPHA[method])
            plan = make_plan(loaded, stats, allocation, method, s, settings, search)
            plan = refit(loaded, plan, stats, allocation, seqs, progress=False)
            plans[(method, s)] = plan
            seconds[f"{method}@{s}"] = round(time.perf_counter() - t0, 1)
            save_plan(plan, out / f"{method}-{s}.json")
            print(f"{method} {s}: budget {plan.budget:.4f}, {seconds[f'{method}@{s}']} s", flush=True)
    return {"plans": plans, "seconds": seconds}


@torch.no_grad()
def evaluate_all(loaded, plans: dict, seqs: torch.Tensor, batch_size: int = 4) -> dict:
    """Every plan on the same batches; the dense logits of a batch are computed once and shared."""
    model = loaded.model
    device = next(model.parameters()).device
    metrics = {k: Metrics() for k in plans}
    counts = {k: {} for k in plans}
    for i in tqdm(range(0, len(seqs), batch_size), desc="evaluate", unit="batch"):
        ids = seqs[i: i + batch_size].to(device)
        dense = model(input_ids=ids, use_cache=False).logits
        for k, plan in plans.items():
            apply(model, plan)
            with track_sparsity(model):
                metrics[k].update(dense, model(input_ids=ids, use_cache=False).logits, ids)
                for name, m in sparse_linears(model).items():
                    z, t = counts[k].get(name, (0, 0))
                    counts[k][name] = (z + m.counts[0], t + m.counts[1])
            remove(model)
    out = {}
    for k, plan in plans.items():
        per_layer = {n: z / max(t, 1) for n, (z, t) in counts[k].items()}
        out[k] = {**metrics[k].result(), "realized_sparsity": weighted_sparsity(per_layer, plan)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/accuracy")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    p.add_argument("--methods", nargs="+", default=["teal", "wina", "wisparse"])
    p.add_argument("--search-budget", default=None, choices=["fast", "default", "thorough"])
    p.add_argument("--generations", type=int, default=None)
    p.add_argument("--calib-tokens", type=int, default=16384)
    p.add_argument("--eval-tokens", type=int, default=16384)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default="docs/allocation.png", help="Allocation plot of the wisparse plan at 0.5.")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    loaded = load_model()
    built = build_plans(loaded, out, args.sparsity, args.methods, args)
    evaluation = data.load_text([], "evaluation")
    seqs = data.sequences(loaded.tokenizer, evaluation, args.seq_len, args.eval_tokens)
    results = evaluate_all(loaded, built["plans"], seqs)
    rows, records = [], []
    for (method, s), r in sorted(results.items(), key=lambda kv: (kv[0][1], args.methods.index(kv[0][0]))):
        rows.append([method, s, r["realized_sparsity"], r["ppl"], r["ppl"] / r["dense_ppl"] - 1, r["kl"],
                     r["top1_agreement"]])
        records.append({"method": method, "target_sparsity": s, **r})
    dense_ppl = next(iter(results.values()))["dense_ppl"]
    md = table(["method", "target", "realized", "ppl", "ppl increase", "KL", "top-1 agree"], rows)
    summary = {"model": loaded.source, "dense_ppl": dense_ppl, "eval_text": evaluation.description,
               "eval_tokens": next(iter(results.values()))["tokens"], "results": records,
               "seconds": {**built["seconds"], "total": round(time.perf_counter() - t0, 1)},
               "torch_threads": torch.get_num_threads()}
    (out / "accuracy.json").write_text(json.dumps(summary, indent=1))
    (out / "accuracy.md").write_text(f"dense ppl {dense_ppl:.4g} on {summary['eval_tokens']} tokens\n\n{md}\n")
    print(f"dense ppl {dense_ppl:.4g}\n{md}")
    if ("wisparse", 0.5) in built["plans"] and args.plot:
        plot_allocation(built["plans"][("wisparse", 0.5)].to_dict(), args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
