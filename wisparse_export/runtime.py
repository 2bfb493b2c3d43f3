"""`apply(model, plan)`: make each planned linear zero its low-score input channels, in place.

In the spirit of torchao's `quantize_(model, config)`: one call, undone by `remove(model)`. A planned nn.Linear stays
the same module object at the same path with the same `weight` and `bias` parameters: only its class becomes
SparseLinear (a subclass of nn.Linear), and its plan values live in non-persistent buffers and plain attributes, so
`state_dict()` and `save_pretrained` write exactly the dense model's keys and tensors. On CPU the mask is plain
PyTorch; on a CUDA device in bfloat16/float16 the linears run on `kernels`, the backend this module calls. A quantized
lm_head (`models.quantize_lm_head`) is never planned or sparsified, but on the kernels it becomes a `QuantizedHead`,
read by the same kernel at threshold 0, until `remove`.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .errors import WisparseError
from .models import check_plan, execution_device, find_blocks, get_linear, stored
from .plan import Plan
from .scores import column_norms, keep, masked, tau

_STATE = ("threshold", "alpha", "sparsity", "enabled", "counts", "on_kernels", "fused", "index")


def _owned(t: torch.Tensor) -> torch.Tensor:
    """`t` itself when it is contiguous and alone in its storage, else a contiguous copy: the kernel layout's
    transposed views and a fused group's shared storage must not reach a checkpoint (safetensors refuses both)."""
    alone = t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.nbytes
    return t if alone else t.clone(memory_format=torch.contiguous_format)


def _rebind(linear: nn.Linear) -> None:
    """accelerate's offload hook calls the forward bound when it was attached (`_old_forward`): after the class
    changes, that must be the new class's forward, or an offloaded linear would silently stay dense."""
    if "_old_forward" in linear.__dict__:
        linear._old_forward = types.MethodType(type(linear).forward, linear)


class SparseLinear(nn.Linear):
    """y = W (x * [|x| > tau]) + b, tau the per-input-channel threshold t / ||W[:, i]||**alpha.

    Made from an nn.Linear in place by `SparseLinear.convert`, undone by `release`; never constructed.
    """

    norms: torch.Tensor
    tau: torch.Tensor
    threshold: float
    alpha: float
    sparsity: float
    enabled: bool
    counts: list[int] | None      # [zeroed, total] while tracking realized sparsity
    on_kernels: bool              # CUDA kernels (weight in the kernel layout), set by `to_kernels`
    fused: kernels.Fused | None   # the group this linear launches with, member `index`
    index: int

    @classmethod
    def convert(cls, linear: nn.Linear, threshold: float, alpha: float, sparsity: float = 0.0) -> SparseLinear:
        """Turn `linear` itself into a SparseLinear: same object, same parameters, plan values added."""
        if type(linear) is not nn.Linear:
            raise WisparseError(f"cannot sparsify a {type(linear).__name__}: only a plain torch.nn.Linear")
        linear.__class__ = cls  # norms and tau where it computes (an offloaded weight is read where it is kept)
        _rebind(linear)
        norms = column_norms(stored(linear)).to(execution_device(linear))
        linear.register_buffer("norms", norms, persistent=False)
        linear.register_buffer("tau", torch.empty_like(linear.norms), persistent=False)
        linear.enabled, linear.counts, linear.on_kernels, linear.fused, linear.index = True, None, False, None, 0
        linear.set(threshold, alpha, sparsity)
        return linear

    def release(self) -> nn.Linear:
        """Back to the plain nn.Linear it was; weights in the kernel layout own contiguous [out, in] storage again."""
        if self.on_kernels:
            self.weight.data = _owned(self.weight.data)
            if self.bias is not None:
                self.bias.data = _owned(self.bias.data)
            if kernels.quantized(self):  # the stored form: [out, in] contiguous again, as export reads it
                self.weight_q, self.weight_scale = _owned(self.weight_q), _owned(self.weight_scale)
        del self.norms, self.tau
        for name in _STATE:
            self.__dict__.pop(name, None)
        self.__class__ = nn.Linear
        _rebind(self)
        return self

    def set(self, threshold: float, alpha: float, sparsity: float = 0.0) -> None:
        """Re-threshold in place (the allocation search tries thousands of plans without rebuilding modules)."""
        self.threshold, self.alpha, self.sparsity = float(threshold), float(alpha), float(sparsity)
        self.tau.copy_(tau(threshold, self.norms, alpha))

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        return keep(x, self.tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return F.linear(x, self.weight, self.bias)
        if self.counts is not None:
            kept = self.mask(x)
            self.counts[0] += int(kept.numel() - kept.sum())
            self.counts[1] += kept.numel()
        if self.on_kernels and x.is_cuda:
            return kernels.sparse_linear(self, x, self.fused, self.index)
        return F.linear(masked(x, self.tau), self.weight, self.bias)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        """The dense model's tensors: on the kernels, [out, in] copies of the weight views (transiently)."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.on_kernels and not keep_vars:
            for name in ("weight", "bias"):
                if destination.get(prefix + name) is not None:
                    destination[prefix + name] = _owned(destination[prefix + name])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        """Loaded weights bring their own column norms, hence tau; on the kernels they are copied into the layout."""
        if self.on_kernels and local_metadata.get("assign_to_params_buffers"):
            raise WisparseError("load_state_dict(assign=True) would undo the kernel layout: remove(model) first")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)
        with torch.no_grad():
            self.norms.copy_(column_norms(self.weight))
        self.set(self.threshold, self.alpha, self.sparsity)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, sparsity={self.sparsity:.3f}, alpha={self.alpha}"


class QuantizedHead(nn.Linear):
    """A quantized lm_head on the kernels: up to kernels.Q_ROWS rows (decode) the kernel reads its 1-byte rows at
    threshold 0 (its dense walk: every row, no mask), more rows the dequantized `weight` on cuBLAS (the dispatch of
    `kernels.sparse_linear`). Not a SparseLinear: it has no plan values, so realized sparsity, `dense_mode` and
    re-thresholding never see it. Made in place by `to_kernels`, undone by `release` (`remove`); same parameters."""

    tau: torch.Tensor      # float32 zeros [in]: nothing finite is dropped
    threshold = 0.0        # what the dispatch reads of a planned linear (kernels.Planned)
    sparsity = 0.0

    @classmethod
    def convert(cls, head: nn.Linear) -> QuantizedHead:
        """`head` itself on the kernels: its stored weight in the kernel layout ([out, in] view of [in, out])."""
        head.__class__ = cls
        _rebind(head)
        head.register_buffer("tau", torch.zeros(head.in_features, device=head.weight.device), persistent=False)
        head.weight_q = kernels.kernel_layout(head.weight_q)
        return head

    def release(self) -> nn.Linear:
        """Back to the plain nn.Linear it was, its stored weight [out, in] contiguous again (as export reads it)."""
        self.weight_q = _owned(self.weight_q)
        del self.tau
        self.__class__ = nn.Linear
        _rebind(self)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.sparse_linear(self, x) if x.is_cuda else F.linear(x, self.weight, self.bias)


def _quantized_head(model: nn.Module) -> nn.Linear | None:
    """The model's lm_head where it is a plain linear quantized by `models.quantize_lm_head`, else None."""
    get = getattr(model, "get_output_embeddings", None)  # a transformers model's; not a bare module list's
    head = get() if get is not None else None
    return head if type(head) is nn.Linear and kernels.quantized(head) else None


def apply(model: nn.Module, plan: Plan, check: bool = True, kernels: bool = True) -> nn.Module:
    """Make `model` sparse as `plan` says, in place; returns the model. Re-applying replaces the last plan.

    A model on a CUDA device in bfloat16/float16 switches to our sparse kernels (weights converted once to the
    kernel layout, q/k/v and gate/up fused); kernels=False keeps the pure-PyTorch path everywhere.
    """
    if check:
        check_plan(model, plan)
    remove(model)
    for name, lp in plan.layers.items():
        SparseLinear.convert(get_linear(model, name), lp.threshold, lp.alpha, lp.sparsity)
    if kernels:
        to_kernels(model, plan.groups or None)
    return model


def to_kernels(model: nn.Module, groups: Sequence[Sequence[str]] | None = None) -> nn.Module:
    """Switch the sparse linears on a CUDA device in bfloat16/float16 to the kernels, once, in place.

    Each weight is converted to the kernel layout ([in, out]; `.weight` stays its [out, in] view, held once; a
    quantized linear's `weight_q` too, while `.weight` keeps its dequantized values for many rows), and each of
    `groups` (names of linears sharing an input: q/k/v, gate/up; None: `models.find_blocks` finds them) that
    the kernels can fuse becomes one launch. A quantized lm_head becomes a `QuantizedHead`. The kernels are compiled
    (or read from the disk cache) and loaded here, outside any graph capture.
    """
    head = _quantized_head(model)
    if head is not None and kernels.supports(head.weight, head.weight_format):
        kernels.preload([(QuantizedHead.convert(head), None)])
    mods = {n: m for n, m in sparse_linears(model).items()
            if not m.on_kernels and kernels.supports(m.weight, getattr(m, "weight_format", None))}
    if not mods:
        return model
    if groups is None:
        groups = [g for b in find_blocks(model) for g in b.groups]
    for g in groups:
        members = [mods.get(n) for n in g]
        if any(m is None or m.fused is not None for m in members) or not kernels.fusable(members):
            continue
        fused = kernels.Fused(members)
        for p, m in enumerate(members):
            weight, bias, m.tau = fused.views(p)
            m.weight.data = weight
            if bias is not None:
                m.bias.data = bias
            if fused.wq is not None:
                m.weight_q, m.weight_scale = fused.q_views(p)
            m.fused, m.index = fused, p
    for m in mods.values():
        if m.fused is None:
            m.weight.data = kernels.kernel_layout(m.weight)
            if kernels.quantized(m):
                m.weight_q = kernels.kernel_layout(m.weight_q)
        m.on_kernels = True
    kernels.preload((m, m.fused) for m in mods.values())
    return model


def remove(model: nn.Module) -> nn.Module:
    """Undo `apply`: every planned linear (and a quantized lm_head on the kernels) is a plain nn.Linear again, its
    weights as they were."""
    for m in [*sparse_linears(model).values(), *(m for m in model.modules() if isinstance(m, QuantizedHead))]:
        m.release()
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
