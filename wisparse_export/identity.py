"""Content identity: which weights and which text a plan, checkpoint or export was made from.

Names and shapes alone cannot tell a base model from its instruct variant, so each planned weight contributes a
few values read at fixed positions. Values are compared with a tolerance of about one bfloat16 step, so the same
weights loaded as float32, bfloat16 or float16 (or exported to ONNX in any of them) match, while different
weights of the same shapes do not. `digest` is the exact form, for keys that must match bit for bit (a resumed
search runs on the very same model and dtype).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable

import torch

from .errors import WisparseError

SAMPLES = 8            # values read from each planned weight
RTOL = 2.0 ** -7       # a bfloat16 step (8 significant bits) with margin for double rounding through float16
ATOL = 1e-6            # float16 flushes values below ~6e-8 to zero


def positions(shape: tuple[int, int], k: int = SAMPLES) -> list[tuple[int, int]]:
    """k (row, column) positions of an [out, in] weight, spread over rows and columns, the same for any dtype."""
    out, inp = int(shape[0]), int(shape[1])
    numel = out * inp
    flat = sorted({(i * numel) // k + (i * 7919 + numel // (2 * k)) % max(numel // k, 1) for i in range(k)})
    return [divmod(f, inp) for f in flat]


def weight_sample(weight: torch.Tensor, k: int = SAMPLES) -> list[float]:
    """The values of an [out, in] weight at `positions`, as float32 numbers (JSON-ready)."""
    rows, cols = zip(*positions(tuple(weight.shape), k), strict=True)
    w = weight.detach()
    vals = w[torch.tensor(rows, device=w.device), torch.tensor(cols, device=w.device)]
    return [float(v) for v in vals.float().cpu()]


def same_values(expected: Iterable[float], actual: Iterable[float]) -> bool:
    """Equal up to float-format rounding (float32 / bfloat16 / float16 of the same weights)."""
    exp, act = list(expected), list(actual)
    return len(exp) == len(act) and all(
        math.isfinite(a) and abs(a - e) <= RTOL * max(abs(a), abs(e)) + ATOL for e, a in zip(exp, act, strict=True))


def check_samples(expected: dict[str, list[float]], actual: dict[str, list[float]], what: str) -> None:
    """Refuse in one line when any planned weight's values differ from those recorded."""
    missing = sorted(set(expected) - set(actual))
    if missing:
        raise WisparseError(f"{what}: no weight for {missing[0]} (and {len(missing) - 1} more)" if len(missing) > 1
                            else f"{what}: no weight for {missing[0]}")
    differ = [n for n in expected if not same_values(expected[n], actual[n])]
    if differ:
        raise WisparseError(f"{what}: the weights differ from those recorded ({len(differ)} of {len(expected)} "
                            f"planned weights, first {differ[0]}): other weights of the same shapes")


def digest(obj) -> str:
    """Exact hash of a JSON-serializable value (samples, settings): for keys that must match bit for bit."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()[:16]


def text_digest(docs: Iterable[str]) -> str:
    """Hash of a text's documents, in order: names the exact calibration text a search or plan used."""
    h = hashlib.sha256()
    for d in docs:
        h.update(hashlib.sha256(d.encode("utf-8", errors="replace")).digest())
    return "sha256:" + h.hexdigest()[:16]
