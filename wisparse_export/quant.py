"""Weight formats of a quantized deployment: how a weight is stored (dtype, scale granularity), how it is made from
the float weight, and what it computes with (its dequantized value).

A format is data, not code paths: `WeightFormat` names the storage dtype, the largest stored magnitude and the scale
granularity, and `quantize` / `dequantize` are the one definition every runtime reproduces:

    scale[r] = max_c |W[r, c]| / qmax          float32, one per output channel (row r of W [out, in])
    q[r, c]  = round_to_nearest(W[r, c] / scale[r]), clamped to [-qmax, qmax], in the storage dtype
    W_deq    = float32(q) * scale[r], rounded once to the model's dtype

float32(q) is exact for both formats and the product is rounded once, so PyTorch, ONNX Runtime's DequantizeLinear
and a kernel scaling in float32 compute the very same dequantized weight. A plan records its format under
"weights" ({"format", "scale"}); plans without it mean unquantized weights. The output projection (lm_head) may be
quantized too, the same way, recorded under "lm_head" (absent: it is in the model's dtype).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import WisparseError
from .identity import ATOL, RTOL

PER_OUTPUT_CHANNEL = "per_output_channel"


@dataclass(frozen=True)
class WeightFormat:
    name: str               # as written in plans and manifests
    storage: torch.dtype    # what the quantized weight is stored as
    qmax: float             # largest stored magnitude: the row's absmax maps onto it
    integer: bool           # round to integers (int8) or to the storage float's grid (fp8)
    scale: str = PER_OUTPUT_CHANNEL  # scale granularity: one float32 per output channel

    def to_dict(self) -> dict:
        return {"format": self.name, "scale": self.scale}

    def step(self, u: torch.Tensor) -> torch.Tensor:
        """Spacing of the storage grid at scaled magnitudes u (= |w| / scale): 1 for int8; for e4m3,
        2^(e - 3) with e = floor(log2 u) (at least -6: subnormals below 2^-6 are spaced 2^-9)."""
        if self.integer:
            return torch.ones_like(u)
        e = torch.floor(torch.log2(u.clamp_min(2.0 ** -6)))
        return torch.exp2(e - 3)


FORMATS = {
    "fp8_e4m3": WeightFormat("fp8_e4m3", torch.float8_e4m3fn, 448.0, integer=False),
    "int8": WeightFormat("int8", torch.int8, 127.0, integer=True),
}
OPTIONS = {"none": None, "fp8": FORMATS["fp8_e4m3"], "int8": FORMATS["int8"]}  # the CLI's --weights


def by_option(value: str, option: str = "--weights") -> WeightFormat | None:
    """The format a `--weights` (or `--lm-head`) value names (none: unquantized); anything else refused in one
    line."""
    if value not in OPTIONS:
        raise WisparseError(f"{option} must be one of {', '.join(OPTIONS)}, got {value!r}")
    return OPTIONS[value]


def from_record(value, where: str, field: str = "weights") -> WeightFormat:
    """A plan's or manifest's optional "weights" (or "lm_head") field, when present: exactly {"format", "scale"}
    naming a known format and its granularity (absent means unquantized; null is refused, as no wisparse writes it)."""
    if not (isinstance(value, dict) and set(value) == {"format", "scale"}):
        raise WisparseError(f"{where}{field} must be an object with exactly \"format\" and \"scale\", got {value!r}")
    fmt = FORMATS.get(value["format"]) if isinstance(value["format"], str) else None
    if fmt is None:
        raise WisparseError(f"{where}{field}.format must be one of {', '.join(FORMATS)}, got {value['format']!r}")
    if value["scale"] != fmt.scale:
        raise WisparseError(f"{where}{field}.scale must be {fmt.scale!r} for {fmt.name}, got {value['scale']!r}")
    return fmt


def quantize(weight: torch.Tensor, fmt: WeightFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """(q [out, in] in fmt.storage, scale [out] float32) of a weight [out, in], from its values in float32
    (absmax scaling, round to nearest even; an all-zero row gets scale 1)."""
    w = weight.detach().float()
    absmax = w.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax / fmt.qmax, torch.ones_like(absmax))
    scaled = (w / scale[:, None]).clamp(-fmt.qmax, fmt.qmax)
    q = scaled.round().to(fmt.storage) if fmt.integer else scaled.to(fmt.storage)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The weight a quantized deployment computes with: float32(q) * scale, rounded once to `dtype`."""
    return (q.float() * scale[:, None]).to(dtype)


def within_step(expected: float, actual: float, scale: float, fmt: WeightFormat) -> bool:
    """Two dequantized values of the same weight, quantized from differently rounded loads (float32 vs bfloat16):
    at most one grid step apart (a value near a rounding midpoint may land on either side), plus the shift of a
    scale whose absmax was rounded too (identity.RTOL: about one bfloat16 step)."""
    v = max(abs(expected), abs(actual))
    step = float(fmt.step(torch.tensor(v / scale))) * scale
    return math.isfinite(actual) and abs(actual - expected) <= step + RTOL * v + ATOL
