"""Mixed-granularity allocation (the WiSparse method): how much sparsity each block gets, and how each block
splits its share among its projections, under one parameter-weighted budget.

Blocks differ in sensitivity, and not monotonically with depth; only the model's output shows how an error in one
block carries to the end, so the search across blocks is an evolution judged by KL(dense || sparse) next-token
distributions on calibration tokens. Inside a block the split among projections is a small problem that a
block-output reconstruction error on cached dense block inputs solves cheaply, once per block and level, giving
a table level -> split. The evolution makes every candidate concrete through these tables, so it judges the final
per-linear configuration end to end.

Block-local error alone misleads (pushing k and v to 0.99 everywhere collapsed SmolLM2), so linears that share an
input move together and each unit stays within `max_deviation` of its block's level.

The evolution fits the calibration tokens it is judged on (on Gemma-3-270M its best KL fell from 0.90 to 0.79
while held-out text got worse than uniform teal), so every choice at the end is made on held-out validation
sequences: the model's alpha (uniform plans at each alpha tried), the final candidate (searched levels with the
refined or the uniform split, or uniform levels with the refined split), and the fallback: a searched plan whose
validation KL is not below teal's and wina's is replaced by the better of them.

Budget: the parameter-weighted mean sparsity over all planned linears equals the target exactly. Block levels
are param-weighted means of their units; mutations move sparsity between two blocks in proportion to their sizes,
and the split for a level between two table rows interpolates them, so both stay exact.
"""

from __future__ import annotations

import bisect
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibration import Allocation, Stats, make_plan, uniform
from .config import SearchConfig
from .data import adds_bos
from .errors import WisparseError
from .files import check_writable, read_json, write_json
from .fitness import KLFitness, Replicas
from .identity import digest, weight_sample
from .models import Loaded, get_linear, input_device, run_blocks, stored
from .runtime import SparseLinear, apply, dense_mode, remove, sparse_linears

Scored = tuple[float, list[float]]  # (KL, block levels): a member of the population


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
                run_blocks(model, ids)
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
                 cfg: SearchConfig, progress: bool) -> dict:
    """Per block: the alpha of each unit, and for each level on the grid the units' sparsities (refined split)."""
    mods = sparse_linears(model)
    names = [b.name for b in loaded.blocks if any(n in mods for n in b.linears)]
    for m in mods.values():
        m.enabled = False
    cached = capture_blocks(model, names, batches)
    unit_grid = _grid(cfg.unit_cap, cfg.unit_step)
    levels = _grid(cfg.max_level, cfg.level_step)
    alphas = [float(a) for a in cfg.alphas]
    tables = {"levels": levels, "unit_step": cfg.unit_step, "blocks": []}
    try:
        for b, name in enumerate(tqdm(names, desc="split", unit="block", disable=not progress)):
            err = unit_errors(model.get_submodule(name), mods, units[b], cached[b], stats, alphas, unit_grid)
            cached[b] = []  # free as we go
            pick = [min(range(len(alphas)), key=lambda a, e=e: sum(e[a])) for e in err]
            curves = [e[a] for e, a in zip(err, pick, strict=True)]
            params = [u.params for u in units[b]]
            rows = []
            for level in levels:
                lo = [max(0.0, level - cfg.max_deviation)] * len(params)
                hi = [min(cfg.unit_cap, level + cfg.max_deviation)] * len(params)
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
            ) -> Allocation:
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


Judge = Callable[[list[list[float]]], list[float]]  # fitness of several candidates at once, in order


def evolve(population: list[Scored], generations: Iterable[int], cfg: SearchConfig,
           vary: Callable[[list[float], random.Random], list[float]], screen: Judge, rank: Judge,
           after: Callable[[int, list[Scored]], None]) -> list[Scored]:
    """Steady-state evolution, lowest fitness first: each child varies the fitter of two random members; children
    are screened cheaply, the best `survivors` ranked in full, and the population keeps its best. Every generation
    draws from its own seeded RNG, so a resumed run draws what an uninterrupted one would. A generation's children
    are judged together, so they can be judged in parallel (the result does not depend on how)."""
    population = sorted(population, key=lambda p: p[0])
    for gen in generations:
        rng = random.Random(cfg.seed * 1_000_003 + gen)
        children = []
        for _ in range(cfg.offspring):
            a, b = rng.choice(population), rng.choice(population)  # tournament of two
            children.append(vary(min(a, b, key=lambda p: p[0])[1], rng))
        screened = sorted(zip(screen(children), children, strict=True), key=lambda p: p[0])
        best = [c for _, c in screened[: cfg.survivors]]
        ranked = list(zip(rank(best), best, strict=True))
        population = sorted(population + ranked, key=lambda p: p[0])[: cfg.population]
        after(gen, population)
    return population


@dataclass
class Batches:
    """Calibration tokens cut for the search: split-table batches, and ranking batches whose first n_screen
    screen the offspring."""

    intra: list[torch.Tensor]
    rank: list[torch.Tensor]
    n_screen: int
    tokens: dict[str, int]


def search_batches(loaded: Loaded, seqs: torch.Tensor, cfg: SearchConfig, device: torch.device) -> Batches:
    """Shorter sequences (cfg.seq_len), batched; token counts as the plan records them."""
    bos = loaded.tokenizer.bos_token_id if adds_bos(loaded.tokenizer) else None
    short = search_sequences(seqs, cfg.seq_len, bos, cfg.seed)
    width = short.shape[1]
    # At most 2k tokens a forward (logits stay ~400 MB), and no more than screening needs.
    per_batch = max(1, min(2048, cfg.screen_tokens) // width)
    n_rank = max(1, min(len(short), cfg.rank_tokens // width))
    n_intra = max(1, min(len(short), cfg.intra_tokens // width))

    def batch(x: torch.Tensor) -> list[torch.Tensor]:
        return [x[i: i + per_batch].to(device) for i in range(0, len(x), per_batch)]

    rank = batch(short[:n_rank])
    n_screen = max(1, min(len(rank), -(-cfg.screen_tokens // (per_batch * width))))
    tokens = {"intra": n_intra * width, "screen": min(n_screen * per_batch, n_rank) * width, "rank": n_rank * width}
    return Batches(batch(short[:n_intra]), rank, n_screen, tokens)


@dataclass
class Problem:
    """One search's fixed parts: block units and their sizes, the split tables, the fitness through them."""

    units: list[list[Unit]]
    params: list[int]  # per block
    tables: dict
    fit: KLFitness | Replicas
    max_level: float
    n_screen: int
    t0: float

    def kls(self, candidates: list[list[float]], n_batches: int | None = None) -> list[float]:
        return self.fit.many([realize(lv, self.tables, self.units) for lv in candidates], n_batches)

    def vary(self, levels: list[float], rng: random.Random) -> list[float]:
        return mutate(levels, self.params, rng, self.max_level)

    def progress(self, generation: int, population: list[Scored]) -> dict:
        return {"generation": generation, "best_kl": min(f for f, _ in population), "evaluations": self.fit.calls,
                "seconds": round(time.perf_counter() - self.t0, 1)}


def first_population(problem: Problem, target: float, cfg: SearchConfig) -> list[Scored]:
    """Uniform levels, levels from the blocks' own errors, their mean, then mutants of these three."""
    n = len(problem.params)
    curves = [t["error"] for t in problem.tables["blocks"]]
    seed = greedy_split(curves, problem.tables["levels"], problem.params, target, [0.0] * n, [problem.max_level] * n)
    flat = [target] * n
    rng = random.Random(cfg.seed)
    starts = [flat, seed, [(a + b) / 2 for a, b in zip(flat, seed, strict=True)]]
    while len(starts) < cfg.population:
        starts.append(problem.vary(rng.choice(starts[:3]), rng))
    starts = starts[: cfg.population]
    return list(zip(problem.kls(starts), starts, strict=True))


def search_levels(problem: Problem, target: float, cfg: SearchConfig, state: dict | None,
                  save: Callable[[dict], None] | None, progress: bool) -> tuple[list[Scored], dict, list[dict]]:
    """Block levels by evolution, fresh or from a checkpoint's state; save(state) after every generation.
    Returns the final population (best first), the starting baselines and the per-generation trace."""
    if state is None:
        population = first_population(problem, target, cfg)
        baselines = {"uniform": population[0][0], "error_seed": population[1][0] if len(population) > 1 else None}
        trace, start = [problem.progress(0, population)], 1
    else:
        population = [(f, lv) for f, lv in state["population"]]
        baselines, trace, start = state["baselines"], state["trace"], state["generation"] + 1
    bar = tqdm(range(start, cfg.generations + 1), desc="search", unit="gen", disable=not progress)
    bar.set_postfix(best_kl=f"{min(f for f, _ in population):.4f}")

    def after(gen: int, population: list[Scored]) -> None:
        trace.append(problem.progress(gen, population))
        bar.set_postfix(best_kl=f"{population[0][0]:.4f}")
        if save is not None:
            save({"generation": gen, "population": population, "tables": problem.tables, "baselines": baselines,
                  "trace": trace})

    population = evolve(population, bar, cfg, problem.vary, lambda lvs: problem.kls(lvs, problem.n_screen),
                        problem.kls, after)
    return population, baselines, trace


# ---------------------------------------------------------------- checkpoint


def say(message: str) -> None:
    """One line on stderr, between progress bars."""
    tqdm.write(message, file=sys.stderr)


def checkpoint_key(loaded: Loaded, stats: Stats, seqs: torch.Tensor, target: float, cfg: SearchConfig,
                   validation: torch.Tensor | None = None) -> dict:
    """What a checkpoint must match to be resumed, part by part: the planned weights' values (not only names and
    shapes), the exact calibration and validation token ids (text, its split, tokenizer, seq_len, token count and
    seed at once), the target and every setting but the generation count (so a finished search can be extended);
    the settings are those the search ran with (the alpha chosen on validation included)."""
    weights = {n: [list(stats.shapes[n]), weight_sample(stored(get_linear(loaded.model, n)))] for n in stats.hist}
    settings = {k: v for k, v in cfg.record().items() if k != "generations"}
    held_out = None if validation is None else validation.tolist()
    return {"weights": digest(weights), "calibration tokens": digest(seqs.tolist()),
            "validation tokens": digest(held_out), "target sparsity": digest(target),
            "search settings": digest(settings)}


def _complete(state: dict, n_blocks: int) -> bool:
    """Has every field a resumed search reads, in the shape this code writes."""
    pop, tables = state.get("population"), state.get("tables")
    return (isinstance(state.get("generation"), int) and isinstance(state.get("trace"), list)
            and isinstance(state.get("baselines"), dict) and isinstance(tables, dict)
            and isinstance(tables.get("blocks"), list) and len(tables["blocks"]) == n_blocks
            and isinstance(pop, list) and len(pop) > 0
            and all(isinstance(p, list) and len(p) == 2 and isinstance(p[1], list) and len(p[1]) == n_blocks
                    for p in pop))


def resume(path: Path, key: dict, n_blocks: int) -> dict | None:
    """The checkpoint's state when this very search wrote it; otherwise None, said in one line (the fresh search
    then writes its own checkpoint over it)."""
    if not path.is_file():
        return None
    try:
        state = read_json(path, "search checkpoint")
    except WisparseError as e:
        say(f"{e}; starting the search fresh")
        return None
    stored = state.get("key")
    if not isinstance(stored, dict):
        say(f"search checkpoint {path} has no key this version reads; starting the search fresh")
        return None
    differ = [k for k in key if stored.get(k) != key[k]]
    if differ:
        say(f"search checkpoint {path} was made for other {', '.join(differ)}; starting the search fresh")
        return None
    if not _complete(state, n_blocks):
        say(f"search checkpoint {path} is incomplete; starting the search fresh")
        return None
    say(f"resuming from generation {state['generation']} of search checkpoint {path}")
    return state


# ---------------------------------------------------------------- the search


def _check(cfg: SearchConfig, stats: Stats, target: float, validated: bool) -> float:
    """The highest block level the settings allow; refuses a target above it or alphas not calibrated."""
    max_level = min(float(cfg.max_level), float(cfg.unit_cap))
    if not 0.0 <= target <= max_level:
        raise WisparseError(f"target sparsity {target} is above the search's max_level {max_level}")
    if not validated and len(cfg.alphas) > 1 and not cfg.unit_alpha:
        raise WisparseError(f"choosing the model's alpha among {list(cfg.alphas)} needs validation sequences")
    need = [*cfg.alphas, *BASELINES.values()] if validated else cfg.alphas
    missing = sorted({float(a) for a in need} - set(stats.alphas))
    if missing:
        raise WisparseError(f"search alphas {missing} were not calibrated (calibrated: {list(stats.alphas)})")
    return max_level


BASELINES = {"teal": 0.0, "wina": 1.0}  # uniform plans the search must beat on validation (calibration.METHOD_ALPHA)


def choose_alpha(val: KLFitness, stats: Stats, target: float, cfg: SearchConfig) -> tuple[SearchConfig, dict]:
    """Validation KL of the uniform plan at every alpha tried and at teal's and wina's; the search then runs at
    the best of cfg.alphas (unless each unit picks its own alpha, cfg.unit_alpha)."""
    alphas = sorted({*map(float, cfg.alphas), *BASELINES.values()})
    kls = {a: val(uniform(stats.hist, target, a)) for a in alphas}
    tried = [float(a) for a in cfg.alphas]
    if cfg.unit_alpha or len(tried) == 1:
        chosen, how = None, "per unit by reconstruction error" if cfg.unit_alpha else "the only one allowed"
        return cfg, {"tried": tried, "chosen": chosen if cfg.unit_alpha else tried[0], "how": how,
                     "uniform_validation_kl": {str(a): k for a, k in kls.items()}}
    best = min(tried, key=lambda a: kls[a])
    return replace(cfg, alphas=(best,)), {"tried": tried, "chosen": best,
                                          "how": "lowest validation KL of the uniform plans",
                                          "uniform_validation_kl": {str(a): k for a, k in kls.items()}}


def final_choice(problem: Problem, best: list[float], target: float, judge: Callable[[Allocation], float]
                 ) -> tuple[str, Allocation, dict[str, float]]:
    """The searched levels with the refined split, the same levels split uniformly within blocks, and uniform
    levels with the refined split (the search's own start: a guard against levels fitted to the search part):
    the one `judge` (validation KL, else calibration KL) likes best."""
    candidates = {"refined": realize(best, problem.tables, problem.units, True),
                  "uniform split": realize(best, problem.tables, problem.units, False),
                  "uniform levels": realize([target] * len(best), problem.tables, problem.units, True)}
    kls = {k: judge(a) for k, a in candidates.items()}
    name = min(kls, key=kls.get)
    return name, candidates[name], kls


def fallback(chosen_kl: float, alpha: dict) -> dict | None:
    """The better of teal and wina when the searched plan is not better than it on validation KL."""
    kls = {m: alpha["uniform_validation_kl"][str(a)] for m, a in BASELINES.items()}
    base = min(kls, key=kls.get)
    if chosen_kl < kls[base]:
        return None
    why = (f"the searched plan's validation KL {chosen_kl:.4f} is not below {base}'s {kls[base]:.4f} "
           f"(teal {kls['teal']:.4f}, wina {kls['wina']:.4f})")
    say(f"writing the uniform {base} plan: {why}")
    return {"to": base, "why": why}


def allocate(loaded: Loaded, stats: Stats, seqs: torch.Tensor, target: float, config: SearchConfig,
             checkpoint: str | Path | None = None, progress: bool = True, validation: torch.Tensor | None = None,
             batch_size: int = 4, workers: int = 1) -> tuple[Allocation, dict]:
    """Search the allocation for `target`; returns ({linear: (sparsity, alpha)}, the search record for the plan).

    validation: held-out sequences; when given, the model's alpha, the final candidate and the fallback to teal
    or wina are decided by KL on them (otherwise the final candidate by calibration KL, without fallback).
    checkpoint: a JSON file written after every generation and removed at the end; the search resumes from it
    only when this very search wrote it (same weights, calibration and validation tokens, target and settings).
    workers: processes judging each generation's candidates (fitness.Replicas); the result is the same.
    """
    max_level = _check(config, stats, target, validation is not None)
    path = check_writable(checkpoint) if checkpoint is not None else None
    model, units = loaded.model, block_units(loaded, stats)
    t0 = time.perf_counter()
    device = input_device(model)
    start = make_plan(loaded, uniform(stats.hist, target, stats.alphas[-1]), stats.threshold, "wisparse", target, {})
    batches = search_batches(loaded, seqs, config, device)  # the same for every alpha choose_alpha may pick
    replicas = Replicas(model, start, batches.rank, workers) if workers > 1 else None  # sent the dense weights
    apply(model, start, check=False)
    try:
        val, alpha, cfg = None, None, config
        if validation is not None:
            val = KLFitness(model, stats, [validation[i: i + batch_size].to(device)
                                           for i in range(0, len(validation), batch_size)])
            cfg, alpha = choose_alpha(val, stats, target, config)
        key = checkpoint_key(loaded, stats, seqs, target, cfg, validation)
        state = resume(path, key, len(units)) if path is not None else None
        save = (lambda s: write_json(path, {"key": key, **s})) if path is not None else None
        tables = split_tables(model, loaded, units, stats, batches.intra, cfg, progress) if state is None \
            else state["tables"]
        t_split = time.perf_counter() - t0
        fit = KLFitness(model, stats, batches.rank)
        if replicas is not None:
            replicas.fit, fit = fit, replicas
        problem = Problem(units, [sum(u.params for u in us) for us in units], tables, fit, max_level,
                          batches.n_screen, t0)
        population, baselines, trace = search_levels(problem, target, cfg, state, save, progress)
        best_kl, best = population[0]
        choice, allocation, final_kls = final_choice(problem, best, target, val if val is not None else problem.fit)
    finally:
        remove(model)
        if replicas is not None:
            replicas.close()
    if path is not None:
        path.unlink(missing_ok=True)
    back = fallback(final_kls[choice], alpha) if alpha is not None else None
    if back is not None:
        allocation = uniform(stats.hist, target, BASELINES[back["to"]])
    record = search_record(loaded, stats, problem, cfg, best, batches, t_split, trace)
    record["fitness"] = {"best_kl": best_kl, **baselines}
    record["validation"] = None if val is None else {"tokens": validation.numel(), "alpha": alpha}
    record["final"] = {"candidate": choice, "judged_by": "validation KL" if val is not None else "calibration KL",
                       "kl": final_kls}
    record["result"] = back["to"] if back else "searched"
    record["fallback"] = back
    return allocation, record


def search_record(loaded: Loaded, stats: Stats, problem: Problem, cfg: SearchConfig, best: list[float],
                  batches: Batches, t_split: float, trace: list[dict]) -> dict:
    """What the plan records of the search: settings, budget, block levels and alphas, tokens, times, trace."""
    blocks = [b for b in loaded.blocks if any(n in stats.hist for n in b.linears)]
    return {
        "method": "evolution across blocks (KL on calibration tokens), reconstruction-error split within blocks",
        "settings": cfg.record(),
        "budget": round(sum(p * lv for p, lv in zip(problem.params, best, strict=True)) / sum(problem.params), 6),
        "blocks": [{"name": b.name, "level": round(lv, 6), "alphas": t["alphas"]}
                   for b, lv, t in zip(blocks, best, problem.tables["blocks"], strict=True)],
        "units": [[u.names for u in us] for us in problem.units],
        "tokens": batches.tokens,
        "seconds": {"split": round(t_split, 1), "total": round(time.perf_counter() - problem.t0, 1)},
        "trace": trace,
    }
