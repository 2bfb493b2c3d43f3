"""Text in, plan out: token sequences -> score statistics -> allocation (uniform for teal and wina, the search for
wisparse) -> thresholds -> thresholds re-read inside the sparse model. The one place that orders these stages;
`calibration` and `search` know nothing of each other's callers.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .calibration import METHOD_ALPHA, Stats, collect, make_plan, refit, uniform
from .config import CalibrationConfig, SearchConfig, check_sparsity
from .data import Text, sequences
from .errors import WisparseError
from .models import Loaded
from .plan import Plan
from .search import allocate


def check_context(loaded: Loaded, seq_len: int) -> None:
    """A sequence longer than the model's context would calibrate positions it never sees in use."""
    context = getattr(loaded.model.config, "max_position_embeddings", None)
    if isinstance(context, int) and seq_len > context:
        raise WisparseError(f"sequence length {seq_len} is beyond the model's context ({context} positions)")


def calibrate(loaded: Loaded, text: Text, sparsity: float, config: CalibrationConfig | None = None, *,
              search: SearchConfig | None = None, checkpoint: str | Path | None = None, progress: bool = True,
              **overrides) -> Plan:
    """Text in, plan out. config: CalibrationConfig.preset() unless given; keyword overrides of its fields
    (method="wina", seq_len=64, ...) are applied with dataclasses.replace. search: the wisparse search's settings
    (default: SearchConfig.preset() for the model's device); checkpoint: where an interrupted search resumes."""
    config = replace(config or CalibrationConfig.preset(), **overrides)
    check_sparsity(sparsity)
    check_context(loaded, config.seq_len)
    seqs = sequences(loaded.tokenizer, text, config.seq_len, config.tokens, seed=config.seed, shuffle=True)
    alphas = (METHOD_ALPHA[config.method],)
    if config.method == "wisparse":  # only the alphas the search may pick: each costs a histogram pass per linear
        search = search or SearchConfig.preset(None, next(loaded.model.parameters()).device)
        alphas = tuple(sorted({*map(float, search.alphas), *alphas}))
    stats = collect(loaded.model, loaded.blocks, seqs, alphas, config.batch_size, progress)
    record = {"text": text.description, "sources": text.sources, "tokens": stats.tokens, "seq_len": config.seq_len,
              "seed": config.seed}
    return plan_from_stats(loaded, stats, seqs, sparsity, config, record, search, checkpoint, progress)


def plan_from_stats(loaded: Loaded, stats: Stats, seqs: torch.Tensor, sparsity: float, config: CalibrationConfig,
                    calibration: dict, search: SearchConfig | None = None, checkpoint: str | Path | None = None,
                    progress: bool = True) -> Plan:
    """Allocation, thresholds and refit from statistics already collected (one collection can serve several
    methods and targets, as in benchmarks/accuracy.py); calibration: what the plan records of its text."""
    record = None
    if config.method == "wisparse":
        search = search or SearchConfig.preset(None, next(loaded.model.parameters()).device)
        allocation, record = allocate(loaded, stats, seqs, sparsity, search, checkpoint, progress)
    else:
        allocation = uniform(stats.hist, sparsity, METHOD_ALPHA[config.method])
    plan = make_plan(loaded, allocation, stats.threshold, config.method, sparsity, calibration, record)
    return refit(loaded, plan, allocation, seqs, config.batch_size, progress)
