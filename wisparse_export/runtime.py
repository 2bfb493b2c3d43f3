"""`apply(model, plan)`: swap each planned linear for a SparseLinear that zeroes low-score input channels.

In the spirit of torchao's `quantize_(model, config)`: in place, one call, undone by `remove(model)`.
On CPU the mask is plain PyTorch; CUDA tensors go through the custom op in `kernels` when it is available.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .models import check_plan, get_linear
from .plan import Plan
from .scores import column_norms, keep, masked, tau


class SparseLinear(nn.Module):
    """y = W (x * [|x| > tau]) + b, tau the per-input-channel threshold t / ||W[:, i]||**alpha."""

    def __init__(self, dense: nn.Linear, threshold: float, alpha: float, sparsity: float = 0.0):
        super().__init__()
        self.dense = dense
        self.register_buffer("norms", column_norms(dense.weight), persistent=False)
        self.register_buffer("tau", torch.empty_like(self.norms), persistent=False)
        self.set(threshold, alpha, sparsity)
        self.enabled = True
        self.counts: list[int] | None = None  # [zeroed, total] while tracking realized sparsity
        self.backend = "torch"  # "cuda" once kernels.prepare() has converted the weights

    def set(self, threshold: float, alpha: float, sparsity: float = 0.0) -> None:
        """Re-threshold in place (the allocation search tries thousands of plans without rebuilding modules)."""
        self.threshold, self.alpha, self.sparsity = float(threshold), float(alpha), float(sparsity)
        self.tau.copy_(tau(threshold, self.norms, alpha))

    @property
    def weight(self) -> torch.Tensor:
        return self.dense.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.dense.bias

    @property
    def in_features(self) -> int:
        return self.dense.in_features

    @property
    def out_features(self) -> int:
        return self.dense.out_features

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        return keep(x, self.tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.dense(x)
        if self.counts is not None:
            keep = self.mask(x)
            self.counts[0] += int(keep.numel() - keep.sum())
            self.counts[1] += keep.numel()
        if self.backend == "cuda" and x.is_cuda:
            from . import kernels

            return kernels.sparse_linear(self, x)
        return self.dense(masked(x, self.tau))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, sparsity={self.sparsity:.3f}, alpha={self.alpha}"


def apply(model: nn.Module, plan: Plan, check: bool = True, kernels: bool = True) -> nn.Module:
    """Make `model` sparse as `plan` says, in place; returns the model. Re-applying replaces the last plan.

    A model on a CUDA device in bfloat16/float16 switches to our sparse kernels (weights converted once to the
    kernel layout, q/k/v and gate/up fused); kernels=False keeps the pure-PyTorch path everywhere.
    """
    if check:
        check_plan(model, plan)
    remove(model)
    for name, lp in plan.layers.items():
        dense = get_linear(model, name)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, SparseLinear(dense, lp.threshold, lp.alpha, lp.sparsity))
    if kernels and any(p.is_cuda for p in model.parameters()):
        from .kernels import prepare

        prepare(model, groups=plan.groups or None)
    return model


def remove(model: nn.Module) -> nn.Module:
    """Undo `apply`: put the original linears back."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, SparseLinear):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, mod.dense)
    return model


def sparse_linears(model: nn.Module) -> dict[str, SparseLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}


@contextmanager
def dense_mode(model: nn.Module):
    """Run the applied model densely for a while (the evaluation's reference) without undoing the plan."""
    mods = list(sparse_linears(model).values())
    for m in mods:
        m.enabled = False
    try:
        yield model
    finally:
        for m in mods:
            m.enabled = True


@contextmanager
def track_sparsity(model: nn.Module):
    """Count zeroed input channels per sparse linear; yields a function returning {name: realized sparsity}."""
    mods = sparse_linears(model)
    for m in mods.values():
        m.counts = [0, 0]

    def realized() -> dict[str, float]:
        return {n: m.counts[0] / max(m.counts[1], 1) for n, m in mods.items()}

    try:
        yield realized
    finally:
        for m in mods.values():
            m.counts = None
