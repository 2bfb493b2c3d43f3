"""Mixed-granularity allocation (placeholder until the search lands): uniform weight-aware sparsity."""

from __future__ import annotations


def allocate(loaded, stats, seqs, target: float, settings: dict, progress: bool = True):
    from .calibration import uniform

    return uniform(stats, target, 1.0), {"note": "uniform placeholder"}
