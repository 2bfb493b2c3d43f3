"""Text in, plan out: calibration documents split into a search part and a held-out validation part -> token
sequences -> score statistics -> allocation (uniform for teal and wina, the search for wisparse, judged at the end
on the validation part) -> thresholds -> thresholds re-read inside the sparse model. The one place that orders
these stages; `calibration` and `search` know nothing of each other's callers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .calibration import METHOD_ALPHA, Stats, collect, make_plan, refit, uniform
from .config import CalibrationConfig, SearchConfig, check_sparsity
from .data import Text, sequences
from .errors import WisparseError
from .models import Loaded, input_device
from .plan import Plan
from .search import allocate


def check_context(loaded: Loaded, seq_len: int) -> None:
    """A sequence longer than the model's context would calibrate positions it never sees in use."""
    context = getattr(loaded.model.config, "max_position_embeddings", None)
    if isinstance(context, int) and seq_len > context:
        raise WisparseError(f"sequence length {seq_len} is beyond the model's context ({context} positions)")


def split_text(text: Text, fraction: float, seed: int) -> tuple[Text, Text, str]:
    """Documents (not tokens) into a search part and a disjoint validation part of about `fraction` of them,
    by a seeded permutation. A text of one document is split by its lines; returns (search, validation, unit)."""
    docs, unit = [d for d in text.docs if d.strip()], "documents"
    if len(docs) < 2:
        docs, unit = [ln for d in docs for ln in d.splitlines() if ln.strip()], "lines"
    if len(docs) < 2:
        raise WisparseError(f"calibration text is too short to hold part of it out for validation: {len(docs)} "
                            f"document(s) or line(s), need at least 2 ({text.description})")
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max(1, round(fraction * len(docs))), len(docs) - 1)
    held = sorted(order[:n_val])
    kept = sorted(order[n_val:])
    return (Text([docs[i] for i in kept], f"{text.description}:search", text.sources),
            Text([docs[i] for i in held], f"{text.description}:validation", text.sources), unit)


@dataclass
class Calibrated:
    """What one pass over the calibration text gives: statistics of the search part, its sequences, the
    validation sequences, and what a plan records of all this (its calibration section)."""

    stats: Stats
    seqs: torch.Tensor
    validation: torch.Tensor
    record: dict


def stat_alphas(method: str, search: SearchConfig | None) -> tuple[float, ...]:
    """The alphas to histogram: the method's; for wisparse also those the search tries and teal's and wina's
    (the baselines it must beat). One collection pass histograms all of them."""
    alphas = {METHOD_ALPHA[method]}
    if method == "wisparse" and search is not None:
        alphas |= {*map(float, search.alphas), METHOD_ALPHA["teal"], METHOD_ALPHA["wina"]}
    return tuple(sorted(alphas))


def prepare(loaded: Loaded, text: Text, config: CalibrationConfig, alphas: tuple[float, ...],
            progress: bool = True) -> Calibrated:
    """Split the text, cut both parts into sequences, histogram the search part's scores at `alphas`."""
    check_context(loaded, config.seq_len)
    search_text, val_text, unit = split_text(text, config.validation, config.seed)
    seqs = sequences(loaded.tokenizer, search_text, config.seq_len, config.tokens, seed=config.seed, shuffle=True)
    val = sequences(loaded.tokenizer, val_text, config.seq_len, config.validation_tokens, seed=config.seed,
                    shuffle=True)
    stats = collect(loaded.model, loaded.blocks, seqs, alphas, config.batch_size, progress)
    split = {"what": f"calibration {unit}, seeded permutation (seed {config.seed})", "fraction": config.validation,
             "search": {unit: len(search_text.docs), "tokens": stats.tokens},
             "validation": {unit: len(val_text.docs), "tokens": val.numel()}}
    record = {"text": text.description, "sources": text.sources, "tokens": stats.tokens, "seq_len": config.seq_len,
              "seed": config.seed, "split": split}
    return Calibrated(stats, seqs, val, record)


def calibrate(loaded: Loaded, text: Text, sparsity: float, config: CalibrationConfig | None = None, *,
              search: SearchConfig | None = None, checkpoint: str | Path | None = None, progress: bool = True,
              workers: int = 1, **overrides) -> Plan:
    """Text in, plan out. config: CalibrationConfig.preset() unless given; keyword overrides of its fields
    (method="wina", seq_len=64, ...) are applied with dataclasses.replace. search: the wisparse search's settings
    (default: SearchConfig.preset() for the model's device); checkpoint: where an interrupted search resumes;
    workers: processes judging the search's candidates in parallel, one model replica each (same plan)."""
    config = replace(config or CalibrationConfig.preset(), **overrides)
    check_sparsity(sparsity)
    if config.method == "wisparse":
        search = search or SearchConfig.preset(None, input_device(loaded.model))
    cal = prepare(loaded, text, config, stat_alphas(config.method, search), progress)
    return plan_from_stats(loaded, cal, sparsity, config, search, checkpoint, progress, workers)


def plan_from_stats(loaded: Loaded, cal: Calibrated, sparsity: float, config: CalibrationConfig,
                    search: SearchConfig | None = None, checkpoint: str | Path | None = None,
                    progress: bool = True, workers: int = 1) -> Plan:
    """Allocation, thresholds and refit from statistics already collected (one collection can serve several
    methods and targets, as in benchmarks/accuracy.py). A wisparse plan that does not beat teal and wina on the
    validation part is written as the better of them (method teal or wina; the search record says why)."""
    record, method = None, config.method
    if method == "wisparse":
        search = search or SearchConfig.preset(None, input_device(loaded.model))
        allocation, record = allocate(loaded, cal.stats, cal.seqs, sparsity, search, checkpoint, progress,
                                      validation=cal.validation, batch_size=config.batch_size, workers=workers)
        method = record["result"] if record.get("fallback") else method
    else:
        allocation = uniform(cal.stats.hist, sparsity, METHOD_ALPHA[method])
    plan = make_plan(loaded, allocation, cal.stats.threshold, method, sparsity, cal.record, record)
    return refit(loaded, plan, allocation, cal.seqs, config.batch_size, progress)
