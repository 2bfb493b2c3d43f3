"""Accuracy table: teal / wina / wisparse at several sparsities, on text domains calibration never saw.

One process per model: the model is loaded once and the calibration split (search part + validation part) is
histogrammed once at alphas 0, 0.5 and 1, which serve all three methods; each plan then goes through the same
allocation, validation decisions and refit as `wisparse calibrate` (pipeline.plan_from_stats), is saved as a plan
file, and every plan is evaluated on every domain with one dense pass per batch shared among the plans. Writes
accuracy-TAG.json and accuracy-TAG.md (and the plans) to --out, and prints how long each step took.

    python benchmarks/accuracy.py --out docs/accuracy --search-budget fast                 # embedded SmolLM2
    python benchmarks/accuracy.py --model /tmp/gemma-3-270m-q4_k_m.gguf --tag gemma3-270m --out docs/accuracy
    python benchmarks/accuracy.py --weights fp8 --methods teal wisparse --out docs/accuracy/quantized

--weights fp8|int8 quantizes the decoder-block weights first (as `wisparse calibrate --weights`): every plan, and
the dense reference its KL and top-1 are measured against, are then the quantized model's; the table also gives
the dense quantized model against the float one.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from wisparse_export import data, pipeline
from wisparse_export.config import CalibrationConfig, SearchConfig
from wisparse_export.evaluate import Metrics, weighted_sparsity
from wisparse_export.models import block_linears, load_model, quantize_weights
from wisparse_export.plan import load_plan, save_plan
from wisparse_export.quant import OPTIONS, by_option
from wisparse_export.report import plot_allocation
from wisparse_export.runtime import apply, remove, sparse_linears, track_sparsity

T0 = time.perf_counter()


def step(what: str, since: float) -> float:
    now = time.perf_counter()
    print(f"[{now - T0:7.1f} s] {what}: {now - since:.1f} s", flush=True)
    return now


def md_table(headers: list[str], rows: list[list]) -> str:
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [headers, ["---"] * len(headers), *([cell(v) for v in r] for r in rows)]
    return "\n".join("| " + " | ".join(r) + " |" for r in lines)


def decision(plan) -> str:
    """The validation decisions a wisparse plan records, in a few words."""
    rec = plan.search or {}
    v = rec.get("validation") or {}
    if not v:
        return ""
    kls = v["alpha"]["uniform_validation_kl"]
    alpha = f"alpha {v['alpha']['chosen']} (val KL " + ", ".join(f"{a}: {k:.3f}" for a, k in kls.items()) + ")"
    final = f"{rec['final']['candidate']} {rec['final']['kl'][rec['final']['candidate']]:.3f}"
    return f"{alpha}; {final}; " + (f"fallback to {rec['fallback']['to']}" if rec.get("fallback") else "searched")


def build_plans(loaded, out: Path, tag: str, args) -> tuple[dict, dict]:
    config = CalibrationConfig.preset(tokens=args.calib_tokens, seq_len=args.seq_len, seed=args.seed,
                                      validation_tokens=args.validation_tokens)
    device = next(loaded.model.parameters()).device
    search = SearchConfig.preset(args.search_budget, device)
    search = replace(search, generations=args.generations) if args.generations is not None else search
    files = {(m, s): out / f"{tag}-{m}-{s}.json" for s in args.sparsity for m in args.methods}
    if args.reuse_plans and all(f.is_file() for f in files.values()):  # an earlier run's plans: evaluate them again
        return {k: load_plan(f) for k, f in files.items()}, {}
    t = time.perf_counter()
    cal = pipeline.prepare(loaded, data.load_text(None, "calibration"), config, (0.0, 0.5, 1.0), progress=True)
    step(f"statistics (alphas 0, 0.5, 1; {cal.stats.tokens} search tokens, {cal.validation.numel()} validation)", t)
    plans, seconds = {}, {}
    for s in args.sparsity:
        for method in args.methods:
            t = time.perf_counter()
            plan = pipeline.plan_from_stats(loaded, cal, s, replace(config, method=method), search,
                                            out / f"{tag}-{method}-{s}.search.json", progress=True)
            plans[(method, s)] = plan
            save_plan(plan, out / f"{tag}-{method}-{s}.json")
            seconds[f"{method}@{s}"] = round(step(f"{method} {s} -> {plan.method}, budget {plan.budget:.4f}", t)
                                             - t, 1)
    return plans, seconds


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
                    z, n = counts[k].get(name, (0, 0))
                    counts[k][name] = (z + m.counts[0], n + m.counts[1])
            remove(model)
    out = {}
    for k, plan in plans.items():
        per_layer = {n: z / max(t, 1) for n, (z, t) in counts[k].items()}
        out[k] = {**metrics[k].result(), "realized_sparsity": weighted_sparsity(per_layer, plan)}
    return out


@torch.no_grad()
def quantized_vs_float(loaded, float_weights: dict, seqs: torch.Tensor, batch_size: int = 4) -> dict:
    """The dense quantized model against the dense float one (its `dense_ppl`) on the same batches: the float
    weights are swapped in for the reference pass and back out."""
    model, metrics = loaded.model, Metrics()
    linears = {n: m for n, m in model.named_modules() if n in float_weights}
    device = next(model.parameters()).device
    for i in tqdm(range(0, len(seqs), batch_size), desc="dense quantized vs float", unit="batch"):
        ids = seqs[i: i + batch_size].to(device)
        quantized = {n: m.weight.data for n, m in linears.items()}
        for n, m in linears.items():
            m.weight.data = float_weights[n]
        reference = model(input_ids=ids, use_cache=False).logits
        for n, m in linears.items():
            m.weight.data = quantized[n]
        metrics.update(reference, model(input_ids=ids, use_cache=False).logits, ids)
    return metrics.result()


def domains(args) -> list[data.Text]:
    """The evaluation texts; each is checked to share no passage with the calibration text."""
    calibration = data.load_text(None, "calibration")
    texts = [data.load_text(None if d == "default" else [d], "evaluation") for d in args.domains]
    for t in texts:
        data.check_disjoint(calibration, t)
    return texts


def report(loaded, plans: dict, results: dict, args) -> tuple[dict, str]:
    records, md = [], []
    for domain, res in results.items():
        rows = []
        for (method, s), r in sorted(res["plans"].items(), key=lambda kv: (kv[0][1], args.methods.index(kv[0][0]))):
            plan = plans[(method, s)]
            rows.append([method if plan.method == method else f"{method} -> {plan.method}", s,
                         r["realized_sparsity"], r["ppl"], f"{r['ppl'] / r['dense_ppl'] - 1:+.1%}", r["kl"],
                         r["top1_agreement"], decision(plan)])
            records.append({"domain": domain, "method": method, "written": plan.method, "target_sparsity": s,
                            "decision": plan.search and {k: plan.search.get(k) for k in
                                                         ("validation", "final", "result", "fallback")}, **r})
        first = next(iter(res["plans"].values()))
        q = res.get("dense_vs_float")
        versus = "" if q is None else (
            f" ({args.weights} weights; dense float ppl {q['dense_ppl']:.4g}: {q['ppl'] / q['dense_ppl'] - 1:+.2%}, "
            f"KL {q['kl']:.4f}, top-1 agree {q['top1_agreement']:.4f} against it)")
        if q is not None:
            records.append({"domain": domain, "method": f"dense {args.weights} vs float", **q})
        md.append(f"### {domain}\n\ndense ppl {first['dense_ppl']:.4g} on {first['tokens']} tokens{versus}\n\n"
                  + md_table(["method", "target", "realized", "ppl", "ppl increase", "KL", "top-1 agree",
                           "validation decisions"], rows))
    return {"model": loaded.source, "results": records}, f"## {loaded.source}\n\n" + "\n\n".join(md) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="Folder, .gguf or hub id (default: the embedded SmolLM2-135M).")
    p.add_argument("--tag", default=None, help="Name of this model's files in --out (default: from the model).")
    p.add_argument("--device", default="cpu", help="cpu or cuda; float32 either way unless --dtype.")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--weights", default="none", choices=list(OPTIONS),
                   help="Quantize the decoder-block weights first (as calibrate --weights); tag gets the suffix.")
    p.add_argument("--out", default="docs/accuracy")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    p.add_argument("--methods", nargs="+", default=["teal", "wina", "wisparse"])
    p.add_argument("--domains", nargs="+", default=["default", "builtin:pydoc"],
                   help="Evaluation texts: 'default' (the embedded corpus's evaluation split) or a --text source.")
    p.add_argument("--search-budget", default="fast", choices=["fast", "default", "thorough"])
    p.add_argument("--generations", type=int, default=None)
    p.add_argument("--calib-tokens", type=int, default=16384)
    p.add_argument("--validation-tokens", type=int, default=CalibrationConfig.preset().validation_tokens)
    p.add_argument("--eval-tokens", type=int, default=16384)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, help="Allocation plot of the wisparse plan at 0.5.")
    p.add_argument("--reuse-plans", action="store_true",
                   help="Evaluate the plans an earlier run wrote in --out (all of them must be there) instead of "
                   "calibrating again (they are checked against the model as any plan is).")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    texts = domains(args)
    loaded = load_model(args.model, args.dtype, args.device)
    tag = (args.tag or Path(loaded.source).name.split(".")[0]) + ("" if args.weights == "none" else f"-{args.weights}")
    fmt = by_option(args.weights)
    float_weights = {} if fmt is None else {n: m.weight.data.clone() for n, m in block_linears(loaded.model).items()}
    quantize_weights(loaded.model, fmt)
    t = step(f"load {loaded.source} on {args.device}, {args.dtype}", t)
    plans, seconds = build_plans(loaded, out, tag, args)
    results = {}
    for text in texts:
        t = time.perf_counter()
        seqs = data.sequences(loaded.tokenizer, text, args.seq_len, args.eval_tokens)
        results[text.description] = {"plans": evaluate_all(loaded, plans, seqs)}
        if float_weights:
            results[text.description]["dense_vs_float"] = quantized_vs_float(loaded, float_weights, seqs)
        seconds[f"evaluate {text.description}"] = round(step(f"evaluate {len(plans)} plans on {text.description}",
                                                             t) - t, 1)
    summary, md = report(loaded, plans, results, args)
    summary.update(seconds={**seconds, "total": round(time.perf_counter() - T0, 1)},
                   torch_threads=torch.get_num_threads(), device=args.device, dtype=args.dtype, weights=args.weights,
                   search_budget=args.search_budget, argv=vars(args))
    (out / f"accuracy-{tag}.json").write_text(json.dumps(summary, indent=1))
    (out / f"accuracy-{tag}.md").write_text(md)
    print(md)
    if ("wisparse", 0.5) in plans and args.plot:
        plot_allocation(plans[("wisparse", 0.5)].to_dict(), args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
