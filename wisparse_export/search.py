"""Mixed-granularity allocation (the WiSparse method): how much sparsity each block gets, and how each block
splits its share among its projections, under one parameter-weighted budget.

Blocks differ in sensitivity, and not monotonically with depth; only the model's output shows how an error in one
block carries to the end, so the search across blocks is an evolution judged by KL(dense || sparse) next-token
distributions on calibration tokens. Inside a block the split among projections is a small problem that a
block-output reconstruction error on cached dense block inputs solves cheaply, once per block and level, giving
a table level -> split. The evolution makes every candidate concrete through these tables, so it judges the final
per-linear configuration end to end.

Block-local error alone misleads (pushing k and v to 0.99 everywhere collapsed SmolLM2), so linears that share an
input move together, each unit stays within `max_deviation` of its block's level, and at the end the refined
split is kept only if its end-to-end KL beats the within-block-uniform split at the same block levels.

Budget: the parameter-weighted mean sparsity over all planned linears equals the target exactly. Block levels
are param-weighted means of their units; mutations move sparsity between two blocks in proportion to their sizes,
and the split for a level between two table rows interpolates them, so both stay exact.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.resources
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .calibration import Stats, make_plan, uniform
from .data import adds_bos
from .errors import WisparseError
from .files import write_json
from .models import Loaded, fingerprint
from .runtime import SparseLinear, apply, dense_mode, remove

BUDGETS = ("fast", "default", "thorough")
KNOBS = ("seq_len", "intra_tokens", "screen_tokens", "rank_tokens", "population", "generations", "offspring",
         "survivors", "level_step", "unit_step", "max_level", "unit_cap", "max_deviation", "alphas", "seed")


def presets() -> dict[str, dict]:
    """The search recipes (calibration/search_presets.json), by name."""
    text = importlib.resources.files("wisparse_export.recipes").joinpath("search_presets.json").read_text()
    return json.loads(text)


def resolve_settings(settings: dict | None, device: torch.device | str = "cpu") -> dict:
    """A preset (settings['budget']; default: 'default' on a GPU, 'fast' on CPU) with explicit values on top."""
    settings = dict(settings or {})
    budget = settings.pop("budget", None) or ("default" if str(device).startswith("cuda") else "fast")
    table = presets()
    if budget not in table:
        raise WisparseError(f"unknown search budget {budget!r}; choose one of {', '.join(table)}")
    out = {k: v for k, v in table[budget].items() if k != "description"}
    unknown = set(settings) - set(KNOBS) - {"checkpoint"}
    if unknown:
        raise WisparseError(f"unknown search settings: {', '.join(sorted(unknown))}")
    out.update({k: v for k, v in settings.items() if v is not None})
    out["budget"] = budget
    for k in ("generations", "offspring", "population", "survivors", "screen_tokens", "rank_tokens", "seq_len"):
        if int(out[k]) < (0 if k == "generations" else 1):
            raise WisparseError(f"search setting {k} must be positive, got {out[k]}")
    out["survivors"] = min(out["survivors"], out["offspring"])
    out["screen_tokens"] = min(out["screen_tokens"], out["rank_tokens"])
    return out


@dataclass
class Unit:
    """Linears of one block that share an input: they get one sparsity (and one alpha) together."""

    names: list[str]
    params: int


def block_units(loaded: Loaded, stats: Stats) -> list[list[Unit]]:
    units = []
    for block in loaded.blocks:
        us = [Unit([n for n in g if n in stats.hist], 0) for g in block.groups]
        us = [u for u in us if u.names]
        for u in us:
            u.params = sum(stats.shapes[n][0] * stats.shapes[n][1] for n in u.names)
        if us:
            units.append(us)
    return units


def search_sequences(seqs: torch.Tensor, seq_len: int, bos: int | None, seed: int) -> torch.Tensor:
    """Cut calibration sequences into shorter ones (BOS kept in front where the model wants it), shuffled."""
    if seq_len < seqs.shape[1]:
        body, b = (seqs[:, 1:], seq_len - 1) if bos is not None else (seqs, seq_len)
        n = body.shape[1] // b
        seqs = body[:, : n * b].reshape(-1, b)
        if bos is not None:
            seqs = torch.cat([torch.full((len(seqs), 1), bos, dtype=seqs.dtype), seqs], dim=1)
    return seqs[torch.randperm(len(seqs), generator=torch.Generator().manual_seed(seed))]


def interp(curve: list[float], xs: list[float], s: float) -> float:
    """Piecewise-linear read of a curve sampled at xs (ascending); flat beyond its ends."""
    k = min(max(bisect.bisect_right(xs, s) - 1, 0), len(xs) - 2)
    w = min(max((s - xs[k]) / (xs[k + 1] - xs[k]), 0.0), 1.0)
    return curve[k] * (1 - w) + curve[k + 1] * w


def greedy_split(curves: list[list[float]], xs: list[float], params: list[int], level: float, lo: list[float],
                 hi: list[float], inc: float = 0.01) -> list[float]:
    """Raise the cheapest member (error added per parameter made sparse) in small steps until the param-weighted
    mean is `level`; members start at `lo` and stop at `hi`. Exact: the last step is cut to fit."""
    s = list(lo)
    need = level * sum(params) - sum(p * x for p, x in zip(params, s, strict=True))
    while need > 1e-9 * sum(params):
        best, best_cost, best_d = -1, float("inf"), 0.0
        for u, c in enumerate(curves):
            d = min(inc, hi[u] - s[u], need / params[u])
            if d <= 1e-12:
                continue
            cost = (interp(c, xs, s[u] + d) - interp(c, xs, s[u])) / (params[u] * d)
            if cost < best_cost:
                best, best_cost, best_d = u, cost, d
        if best < 0:
            raise WisparseError(f"cannot reach level {level:.4f} within the bounds {hi}")
        s[best] += best_d
        need -= best_d * params[best]
    return s


# ---------------------------------------------------------------- stage 2: split within a block


@torch.no_grad()
def capture_blocks(model: nn.Module, names: list[str], batches: list[torch.Tensor]) -> list[list[tuple]]:
    """Each block's exact call (args, kwargs) and dense output, per batch, to replay the block alone."""
    cached: list[list[tuple]] = [[] for _ in names]
    hooks = []
    for i, name in enumerate(names):
        def hook(mod, args, kwargs, out, i=i):
            out = out[0] if isinstance(out, tuple) else out
            cached[i].append((args, kwargs, out))
        hooks.append(model.get_submodule(name).register_forward_hook(hook, with_kwargs=True))
    try:
        with dense_mode(model):
            for ids in batches:
                model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return cached


@torch.no_grad()
def unit_errors(layer: nn.Module, mods: dict[str, SparseLinear], units: list[Unit], cached: list[tuple],
                stats: Stats, alphas: list[float], grid: list[float]) -> list[list[list[float]]]:
    """err[u][a][g]: block-output squared error (relative to the dense output's power) with only unit u sparse,
    at alpha alphas[a] and sparsity grid[g]."""
    power = sum(out.float().pow(2).sum().item() for _, _, out in cached)
    err = []
    for u in units:
        per_alpha = []
        for a in alphas:
            curve = [0.0]
            for s in grid[1:]:
                for n in u.names:
                    mods[n].set(stats.threshold(n, s, a), a, s)
                    mods[n].enabled = True
                e = 0.0
                for args, kwargs, out in cached:
                    y = layer(*args, **kwargs)
                    y = y[0] if isinstance(y, tuple) else y
                    e += (y.float() - out.float()).pow(2).sum().item()
                curve.append(max(e / max(power, 1e-30), curve[-1]))  # monotone: noise must not reward sparsity
            per_alpha.append(curve)
        for n in u.names:
            mods[n].enabled = False
        err.append(per_alpha)
    return err


def split_tables(model: nn.Module, loaded: Loaded, units: list[list[Unit]], stats: Stats, batches: list[torch.Tensor],
                 s: dict, progress: bool) -> dict:
    """Per block: the alpha of each unit, and for each level on the grid the units' sparsities (refined split)."""
    mods = {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    names = [b.name for b in loaded.blocks if any(n in mods for n in b.linears)]
    for m in mods.values():
        m.enabled = False
    cached = capture_blocks(model, names, batches)
    unit_grid = _grid(s["unit_cap"], s["unit_step"])
    levels = _grid(s["max_level"], s["level_step"])
    alphas = [float(a) for a in s["alphas"]]
    tables = {"levels": levels, "unit_step": s["unit_step"], "blocks": []}
    try:
        for b, name in enumerate(tqdm(names, desc="split", unit="block", disable=not progress)):
            err = unit_errors(model.get_submodule(name), mods, units[b], cached[b], stats, alphas, unit_grid)
            cached[b] = []  # free as we go
            pick = [min(range(len(alphas)), key=lambda a, e=e: sum(e[a])) for e in err]
            curves = [e[a] for e, a in zip(err, pick, strict=True)]
            params = [u.params for u in units[b]]
            rows = []
            for level in levels:
                lo = [max(0.0, level - s["max_deviation"])] * len(params)
                hi = [min(s["unit_cap"], level + s["max_deviation"])] * len(params)
                rows.append([round(x, 6) for x in greedy_split(curves, unit_grid, params, level, lo, hi)])
            # The block's own error at each level (additive estimate): seeds the search across blocks.
            cost = [sum(interp(c, unit_grid, x) for c, x in zip(curves, row, strict=True)) for row in rows]
            tables["blocks"].append({"alphas": [alphas[a] for a in pick], "splits": rows, "error": cost})
    finally:
        for m in mods.values():
            m.enabled = True
    return tables


def _grid(top: float, step: float) -> list[float]:
    """0, step, 2 step, ... and `top` itself as the last point."""
    xs = [round(i * step, 6) for i in range(int(top / step + 1e-9) + 1)]
    return xs if top - xs[-1] < 1e-9 else [*xs, round(top, 6)]


def realize(levels: list[float], tables: dict, units: list[list[Unit]], refined: bool = True
            ) -> dict[str, tuple[float, float]]:
    """Block levels -> {linear: (sparsity, alpha)} through the tables (interpolated between rows)."""
    grid = tables["levels"]
    out = {}
    for b, level in enumerate(levels):
        t = tables["blocks"][b]
        for u, unit in enumerate(units[b]):
            x = interp([row[u] for row in t["splits"]], grid, level) if refined else level
            for n in unit.names:
                out[n] = (min(max(x, 0.0), 1.0), t["alphas"][u])
    return out


# ---------------------------------------------------------------- stage 1: evolution across blocks


class KLFitness:
    """Mean KL(dense || sparse) per token on fixed calibration batches; dense log-probs cached once (float16)."""

    def __init__(self, model: nn.Module, stats: Stats, batches: list[torch.Tensor]):
        self.model, self.stats, self.batches = model, stats, batches
        self.mods = {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}
        self.calls = 0
        with torch.no_grad(), dense_mode(model):
            self.dense = [F.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), -1).half()
                          for ids in batches]

    def set(self, allocation: dict[str, tuple[float, float]]) -> None:
        for n, (s, a) in allocation.items():
            self.mods[n].set(self.stats.threshold(n, s, a), a, s)

    @torch.no_grad()
    def __call__(self, allocation: dict[str, tuple[float, float]], n_batches: int | None = None) -> float:
        self.set(allocation)
        self.calls += 1
        total, count = 0.0, 0
        for ids, ld in list(zip(self.batches, self.dense, strict=True))[:n_batches]:
            ls = F.log_softmax(self.model(input_ids=ids, use_cache=False).logits.float(), -1)
            ld = ld.float()
            total += (ld.exp() * (ld - ls)).sum().item()
            count += ids.numel()
        return total / count


def mutate(levels: list[float], params: list[int], rng: random.Random, max_level: float) -> list[float]:
    """Move sparsity from one block to another, 1-3 times, keeping the param-weighted budget exactly."""
    new = list(levels)
    if len(new) < 2:
        return new
    for _ in range(rng.choice((1, 1, 2, 3))):
        for _ in range(20):
            i, j = rng.sample(range(len(new)), 2)
            d = min(rng.uniform(0.01, 0.1), max_level - new[i], new[j] * params[j] / params[i])
            if d > 1e-4:
                new[i] += d
                new[j] -= d * params[i] / params[j]
                break
    return new


def _key(loaded: Loaded, stats: Stats, target: float, s: dict) -> str:
    """What a checkpoint must match to be resumed; not the generation count, so a search can be extended."""
    knobs = {k: s[k] for k in KNOBS if k != "generations"}
    blob = json.dumps([fingerprint(loaded.model), stats.tokens, target, knobs], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def allocate(loaded: Loaded, stats: Stats, seqs: torch.Tensor, target: float, settings: dict | None = None,
             progress: bool = True) -> tuple[dict[str, tuple[float, float]], dict]:
    """Search the allocation for `target`; returns ({linear: (sparsity, alpha)}, the search record for the plan).

    settings: a preset name under 'budget' plus any of KNOBS, and 'checkpoint' (a JSON path: written after each
    generation, resumed from when it matches this model, text and settings).
    """
    model = loaded.model
    device = next(model.parameters()).device
    s = resolve_settings(settings, device)
    ckpt_path = Path(s.pop("checkpoint")) if s.get("checkpoint") else None
    max_level = min(float(s["max_level"]), float(s["unit_cap"]))
    if not 0.0 <= target <= max_level:
        raise WisparseError(f"target sparsity {target} is above the search's max_level {max_level}")
    missing = [a for a in s["alphas"] if float(a) not in stats.alphas]
    if missing:
        raise WisparseError(f"search alphas {missing} were not calibrated (calibrated: {list(stats.alphas)})")
    units = block_units(loaded, stats)
    bparams = [sum(u.params for u in us) for us in units]
    t0 = time.perf_counter()
    bos = loaded.tokenizer.bos_token_id if adds_bos(loaded.tokenizer) else None
    short = search_sequences(seqs, int(s["seq_len"]), bos, int(s["seed"]))
    # At most 2k tokens a forward (logits stay ~400 MB), and no more than screening needs.
    per_batch = max(1, min(2048, int(s["screen_tokens"])) // short.shape[1])
    n_rank = max(1, min(len(short), int(s["rank_tokens"]) // short.shape[1]))
    n_intra = max(1, min(len(short), int(s["intra_tokens"]) // short.shape[1]))
    batch = lambda x: [x[i: i + per_batch].to(device) for i in range(0, len(x), per_batch)]
    rank_batches = batch(short[:n_rank])
    n_screen = max(1, min(len(rank_batches), -(-int(s["screen_tokens"]) // (per_batch * short.shape[1]))))
    key = _key(loaded, stats, target, s)
    state = None
    if ckpt_path is not None and ckpt_path.is_file():
        state = json.loads(ckpt_path.read_text())
        if state.get("key") != key:
            state = None

    plan = make_plan(loaded, stats, uniform(stats, target, stats.alphas[-1]), "wisparse", target, {})
    apply(model, plan, check=False)
    try:
        if state is None:
            tables = split_tables(model, loaded, units, stats, batch(short[:n_intra]), s, progress)
        else:
            tables = state["tables"]
        t_split = time.perf_counter() - t0
        fit = KLFitness(model, stats, rank_batches)
        evaluate = lambda lv, n=None, refined=True: fit(realize(lv, tables, units, refined), n)

        if state is None:
            grid = tables["levels"]
            curves = [t["error"] for t in tables["blocks"]]
            seed = greedy_split(curves, grid, bparams, target, [0.0] * len(bparams), [max_level] * len(bparams))
            flat = [target] * len(bparams)
            rng = random.Random(int(s["seed"]))
            starts = [flat, seed, [(a + b) / 2 for a, b in zip(flat, seed, strict=True)]]
            while len(starts) < int(s["population"]):
                starts.append(mutate(rng.choice(starts[:3]), bparams, rng, max_level))
            starts = starts[: max(int(s["population"]), 1)]
            population = [(evaluate(lv), lv) for lv in starts]
            baselines = {"uniform": population[0][0], "error_seed": population[1][0] if len(population) > 1 else None}
            trace = [{"generation": 0, "best_kl": min(population)[0], "evaluations": fit.calls,
                      "seconds": round(time.perf_counter() - t0, 1)}]
            start = 1
        else:
            population = [(f, lv) for f, lv in state["population"]]
            baselines, trace, start = state["baselines"], state["trace"], state["generation"] + 1
        population.sort(key=lambda p: p[0])

        bar = tqdm(range(start, int(s["generations"]) + 1), desc="search", unit="gen", disable=not progress)
        bar.set_postfix(best_kl=f"{population[0][0]:.4f}")
        for gen in bar:
            rng = random.Random(int(s["seed"]) * 1_000_003 + gen)  # per generation: a resumed run draws the same
            children = []
            for _ in range(int(s["offspring"])):
                a, b = rng.choice(population), rng.choice(population)  # tournament of two
                children.append(mutate(min(a, b, key=lambda p: p[0])[1], bparams, rng, max_level))
            screened = sorted(((evaluate(c, n_screen), c) for c in children), key=lambda p: p[0])
            ranked = [(evaluate(c), c) for _, c in screened[: int(s["survivors"])]]
            population = sorted(population + ranked, key=lambda p: p[0])[: int(s["population"])]
            trace.append({"generation": gen, "best_kl": population[0][0], "evaluations": fit.calls,
                          "seconds": round(time.perf_counter() - t0, 1)})
            bar.set_postfix(best_kl=f"{population[0][0]:.4f}")
            if ckpt_path is not None:
                write_json(ckpt_path, {"key": key, "generation": gen, "population": population, "tables": tables,
                                       "baselines": baselines, "trace": trace})

        best_kl, best = population[0]
        flat_split_kl = evaluate(best, refined=False)  # judge the refined split end to end, not by block error
        refined = best_kl <= flat_split_kl
        allocation = realize(best, tables, units, refined)
    finally:
        remove(model)
    total = sum(bparams)
    budget = sum(p * lv for p, lv in zip(bparams, best, strict=True)) / total
    record = {
        "method": "evolution across blocks (KL on calibration tokens), reconstruction-error split within blocks",
        "settings": s,
        "budget": round(budget, 6),
        "blocks": [{"name": b.name, "level": round(lv, 6), "alphas": t["alphas"]}
                   for b, lv, t in zip([b for b in loaded.blocks if any(n in stats.hist for n in b.linears)],
                                       best, tables["blocks"], strict=True)],
        "units": [[u.names for u in us] for us in units],
        "split": "refined" if refined else "uniform within blocks (refined split lost end to end)",
        "fitness": {"best_kl": best_kl, "uniform_split_kl": flat_split_kl, **baselines},
        "tokens": {"intra": n_intra * short.shape[1], "screen": min(n_screen * per_batch, n_rank) * short.shape[1],
                   "rank": n_rank * short.shape[1]},
        "seconds": {"split": round(t_split, 1), "total": round(time.perf_counter() - t0, 1)},
        "trace": trace,
    }
    if ckpt_path is not None:
        ckpt_path.unlink(missing_ok=True)
    return allocation, record
