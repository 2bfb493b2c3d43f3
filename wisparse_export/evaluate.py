"""Accuracy of a sparse model against its dense self: perplexity, KL(dense || sparse), top-1 agreement,
and the sparsity actually realized per linear and overall (parameter-weighted).

`Metrics` only sees logits, so the ONNX Runtime and TensorRT checks reuse it unchanged; the allocation search
judges candidates with the same `kl_sum`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .models import input_device
from .plan import Plan
from .runtime import apply, dense_mode, track_sparsity


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities in float32, whatever the logits' dtype."""
    return F.log_softmax(logits.float(), dim=-1)


def kl_sum(dense: torch.Tensor, sparse: torch.Tensor) -> float:
    """Sum over positions of KL(dense || sparse), both given as float32 log-probabilities (log_probs)."""
    return (dense.exp() * (dense - sparse)).sum().item()


# Float32 log-probabilities made at once: 2048 positions of a 49k vocabulary (384 MiB), the embedded model's batches
# whole. Larger [B, T, V] logits are taken in pieces: same values per position, sums in another order.
LOGPROB_BUDGET = 2048 * 49152


def pieces(shape: torch.Size) -> list[tuple[slice, slice]]:
    """(batch, position) ranges of [B, T, V] logits whose log-probabilities stay within LOGPROB_BUDGET together
    with their temporaries; the whole at once where it fits (then nothing is computed differently)."""
    b, t, v = shape
    if b * t * v <= LOGPROB_BUDGET:
        return [(slice(None), slice(None))]
    step = max(1, LOGPROB_BUDGET // (4 * v))  # ~4 float32 temporaries of a piece's size at a time
    return [(slice(i, i + 1), slice(j, j + step)) for i in range(b) for j in range(0, t, step)]


def half_log_probs(logits: torch.Tensor, device: torch.device) -> torch.Tensor:
    """float16 log-probabilities of [B, T, V] logits, made piece by piece and kept on `device`: the host for a
    model on the GPU (the search's 8192 ranking positions of a 128k vocabulary are 2 GB)."""
    pin = device.type == "cpu" and logits.is_cuda
    out = torch.empty(logits.shape, dtype=torch.float16, device=device, pin_memory=pin)
    for bi, ti in pieces(logits.shape):
        out[bi, ti] = log_probs(logits[bi, ti]).half()
    return out


def kl_pieces(dense: torch.Tensor, logits: torch.Tensor) -> float:
    """Sum over positions of KL(dense || sparse): dense as half_log_probs keeps it, sparse as raw logits."""
    total = 0.0
    for bi, ti in pieces(logits.shape):
        total += kl_sum(dense[bi, ti].to(logits.device, non_blocking=True).float(), log_probs(logits[bi, ti]))
    return total


class Metrics:
    """Accumulates next-token statistics over batches of (dense logits, sparse logits, token ids)."""

    def __init__(self) -> None:
        self.nll_dense = self.nll_sparse = self.kl = 0.0
        self.agree = self.tokens = 0

    def update(self, dense_logits: torch.Tensor, sparse_logits: torch.Tensor, ids: torch.Tensor) -> None:
        dense, sparse, target = dense_logits[:, :-1], sparse_logits[:, :-1], ids[:, 1:]
        for bi, ti in pieces(dense.shape):  # bounded memory at 128k+ vocabularies
            self._add(dense[bi, ti], sparse[bi, ti], target[bi, ti])

    def _add(self, dense_logits: torch.Tensor, sparse_logits: torch.Tensor, target: torch.Tensor) -> None:
        ld = log_probs(dense_logits)
        ls = log_probs(sparse_logits)
        target = target.to(ld.device).unsqueeze(-1)
        self.nll_dense -= ld.gather(-1, target).sum().item()
        self.nll_sparse -= ls.gather(-1, target).sum().item()
        self.kl += kl_sum(ld, ls)
        self.agree += (ld.argmax(-1) == ls.argmax(-1)).sum().item()
        self.tokens += target.numel()

    def result(self) -> dict:
        n = max(self.tokens, 1)
        return {
            "ppl": math.exp(self.nll_sparse / n),
            "dense_ppl": math.exp(self.nll_dense / n),
            "kl": self.kl / n,
            "top1_agreement": self.agree / n,
            "tokens": self.tokens,
        }


def weighted_sparsity(per_layer: dict[str, float], plan: Plan) -> float:
    """Parameter-weighted mean over planned linears: the fraction of weight bytes a kernel skips."""
    total = sum(plan.layers[n].params for n in per_layer)
    return sum(s * plan.layers[n].params for n, s in per_layer.items()) / max(total, 1)


@torch.no_grad()
def evaluate(model: nn.Module, plan: Plan, seqs: torch.Tensor, batch_size: int = 4, progress: bool = True,
             source: str | None = None) -> dict:
    """Dense vs sparse on the same sequences; the model is left with the plan applied."""
    apply(model, plan)
    device = input_device(model)  # token ids go where the model takes them (under a device map too)
    m = Metrics()
    with track_sparsity(model) as realized:
        for i in tqdm(range(0, len(seqs), batch_size), desc="evaluate", unit="batch", disable=not progress):
            ids = seqs[i: i + batch_size].to(device)
            with dense_mode(model):
                dense = model(input_ids=ids, use_cache=False).logits
            sparse = model(input_ids=ids, use_cache=False).logits
            m.update(dense, sparse, ids)
        per_layer = realized()
    return {
        "model": source or plan.model.get("source"),
        "method": plan.method,
        "target_sparsity": plan.target_sparsity,
        "realized_sparsity": weighted_sparsity(per_layer, plan),
        **m.result(),
        "per_layer_sparsity": per_layer,
    }
