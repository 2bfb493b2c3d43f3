"""Weight-aware channel scores: s_i = |x_i| * ||W[:, i]||_2 ** alpha (alpha 0 is magnitude-only, TEAL).

|x_i| * n_i**a > t  <=>  |x_i| > t / n_i**a, so a calibrated threshold becomes a per-channel vector tau that
kernels compare |x| against directly: the weight norms cost nothing at run time.
"""

from __future__ import annotations

import torch


def column_norms(weight: torch.Tensor) -> torch.Tensor:
    """n_i = ||W[:, i]||_2 for W stored [out, in], computed in float32 as the plan contract says."""
    return weight.detach().float().norm(dim=0)


def channel_scores(x: torch.Tensor, norms: torch.Tensor, alpha: float) -> torch.Tensor:
    """Scores for activations x [..., in]; float32."""
    return x.float().abs() * norms.pow(alpha) if alpha else x.float().abs()


def tau(threshold: float, norms: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-channel magnitude threshold t / n_i**alpha (inf for a zero column: that channel never matters).

    Computed in float64; a value beyond float32's range becomes inf (no float32 |x| exceeds it) instead of raising.
    """
    if not alpha or threshold == 0:  # threshold 0 keeps every nonzero channel, whatever the column norm
        return torch.full(norms.shape, float(threshold), dtype=torch.float64, device=norms.device).float()
    scale = norms.double().pow(alpha)
    return torch.where(scale > 0, threshold / scale, torch.full_like(scale, float("inf"))).float()


def keep(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Which channels of x [..., in] survive: float32(|x|) > tau, the comparison every runtime makes."""
    return x.abs().float() > tau


def masked(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """x with its dropped channels set to zero, in x's dtype."""
    return torch.where(keep(x, tau), x, torch.zeros((), dtype=x.dtype, device=x.device))
