"""Calibration: score distributions per planned linear, and thresholds that hit a target sparsity.

Scores s = |x_i| * n_i**alpha are pooled over tokens and channels into a fixed log-spaced histogram per
(linear, alpha), so memory stays a few MB whatever the amount of text, and the threshold for any sparsity is a
quantile read off it: the allocation search asks for thousands of them without touching the model again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import WisparseError
from .models import (
    Block,
    Loaded,
    execution_device,
    get_linear,
    head_format,
    input_device,
    model_section,
    run_blocks,
    stored,
    weight_format,
)
from .plan import LayerPlan, Plan
from .runtime import apply, remove
from .scores import column_norms

LOG_LO, LOG_HI, BINS = math.log(1e-8), math.log(1e4), 8192
WIDTH = (LOG_HI - LOG_LO) / BINS
METHOD_ALPHA = {"teal": 0.0, "wina": 1.0, "wisparse": 1.0}
Allocation = dict[str, tuple[float, float]]  # {linear: (sparsity, alpha)}


@dataclass
class Stats:
    """Histograms of log-scores: hist[name] is [len(alphas), BINS] counts; norms[name] the weight column norms."""

    alphas: tuple[float, ...]
    hist: dict[str, torch.Tensor] = field(default_factory=dict)
    norms: dict[str, torch.Tensor] = field(default_factory=dict)
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    tokens: int = 0

    def threshold(self, name: str, sparsity: float, alpha: float) -> float:
        """The score below which `sparsity` of this linear's (token, channel) scores fall."""
        if alpha not in self.alphas:
            raise WisparseError(f"alpha {alpha} was not calibrated (calibrated: {list(self.alphas)})")
        if sparsity <= 0:
            return 0.0
        counts = self.hist[name][self.alphas.index(alpha)]
        cum = counts.cumsum(0)
        target = min(sparsity, 1.0) * cum[-1].item()
        k = int(torch.searchsorted(cum, torch.tensor([target], dtype=cum.dtype)).clamp(max=BINS - 1))
        below = cum[k - 1].item() if k > 0 else 0.0
        frac = (target - below) / counts[k].item() if counts[k] > 0 else 1.0
        return math.exp(LOG_LO + (k + min(max(frac, 0.0), 1.0)) * WIDTH)


@torch.no_grad()
def collect(model: nn.Module, blocks: list[Block], seqs: torch.Tensor, alphas: Iterable[float], batch_size: int,
            progress: bool = True, label: str = "calibrate") -> Stats:
    """Run the dense model over calibration sequences, histogramming every planned linear's scores; label: the
    progress bar's name."""
    stats = Stats(alphas=tuple(float(a) for a in alphas), tokens=0)
    hooks = []
    for block in blocks:
        for group in block.groups:
            logn = {}
            for name in group:
                lin = get_linear(model, name)
                w = stored(lin)  # offloaded weights are read where accelerate keeps them
                stats.norms[name] = column_norms(w).cpu()
                stats.shapes[name] = (w.shape[0], w.shape[1])
                stats.hist[name] = torch.zeros(len(stats.alphas), BINS, dtype=torch.float64)
                logn[name] = stats.norms[name].to(execution_device(lin)).clamp_min(1e-30).log()

            def hook(mod, args, group=group, logn=logn):
                logx = args[0].detach().float().abs().flatten(0, -2).log()
                magnitude = None  # alpha 0 scores are the group's shared input: one histogram serves all
                for name in group:
                    for j, a in enumerate(stats.alphas):
                        if not a and magnitude is not None:
                            stats.hist[name][j] += magnitude
                            continue
                        v = (logx + a * logn[name]) if a else logx
                        h = torch.histc(v.clamp(LOG_LO, LOG_HI - 1e-6), bins=BINS, min=LOG_LO, max=LOG_HI)
                        h = h.double().cpu()
                        stats.hist[name][j] += h
                        magnitude = magnitude if a else h

            # Hook the module at the path, not the linear inside a SparseLinear: scores are of the unmasked input.
            hooks.append(model.get_submodule(group[0]).register_forward_pre_hook(hook))
    device = input_device(model)
    try:
        for i in tqdm(range(0, len(seqs), batch_size), desc=label, unit="batch", disable=not progress):
            ids = seqs[i: i + batch_size].to(device)
            run_blocks(model, ids)
            stats.tokens += ids.numel()
    finally:
        for h in hooks:
            h.remove()
    return stats


def uniform(names: Iterable[str], sparsity: float, alpha: float) -> Allocation:
    """Every linear at the same sparsity: {name: (sparsity, alpha)}."""
    return {name: (sparsity, alpha) for name in names}


def make_plan(loaded: Loaded, allocation: Allocation, threshold: Callable[[str, float, float], float],
              method: str, target: float, calibration: dict, search: dict | None = None) -> Plan:
    """Turn per-linear (sparsity, alpha) into a plan; threshold(name, sparsity, alpha) gives each layer's score cut
    (Stats.threshold for calibration; bench and tests pass exact quantiles of their own samples). The plan records
    the model's weight format and lm_head format (quantized or not: models.quantize_weights)."""
    layers = {}
    for name, (s, a) in allocation.items():
        lin = get_linear(loaded.model, name)
        layers[name] = LayerPlan(sparsity=round(float(s), 6), threshold=threshold(name, s, a), alpha=a,
                                 shape=(lin.out_features, lin.in_features))
    groups = [g for b in loaded.blocks for g in b.groups if len(g) > 1 and all(n in layers for n in g)]
    return Plan(model=model_section(loaded, layers), method=method, target_sparsity=target, calibration=calibration,
                layers=layers, groups=groups, search=search, weights=weight_format(loaded.model, layers),
                lm_head=head_format(loaded.model))


def refit(loaded: Loaded, plan: Plan, allocation: Allocation, seqs: torch.Tensor,
          batch_size: int, progress: bool = True) -> Plan:
    """Re-read thresholds from scores measured inside the sparse model itself.

    Dense-model statistics overshoot: once earlier layers are sparse, later layers see smaller activations and
    drop more than planned (about +0.02 at 0.5 on SmolLM2). One pass with the plan applied fixes each
    layer's threshold to its own target under the distribution it will really see.
    """
    alphas = tuple(sorted({a for _, a in allocation.values()}))
    apply(loaded.model, plan, check=False)
    try:
        sparse_stats = collect(loaded.model, loaded.blocks, seqs, alphas, batch_size, progress, label="refit")
    finally:
        remove(loaded.model)
    refitted = make_plan(loaded, allocation, sparse_stats.threshold, plan.method, plan.target_sparsity,
                         plan.calibration, plan.search)
    refitted.calibration = {**plan.calibration, "refit": "thresholds read inside the sparse model"}
    return refitted
