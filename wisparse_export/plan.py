"""The plan file: the one contract between calibration and every later stage (runtime, export, TensorRT).

Format (version 1), readable by any tool without this code:
  {"format": "wisparse-plan", "version": 1, "semantics": "...",
   "model": {"source", "architecture", "fingerprint"}, "method", "target_sparsity", "budget",
   "calibration": {"text", "tokens", "seq_len", "seed"},
   "groups": [[linear, ...], ...],                      # linears that share one input (optional)
   "layers": {"model.layers.0.mlp.down_proj": {"sparsity": f, "threshold": t, "alpha": a, "shape": [out, in]}},
   "search": {...}}                                     # settings and trace of the allocation search (optional)
Input channel i of a planned linear is kept iff |x_i| * ||W[:, i]||_2 ** alpha > threshold, W as stored
([out, in]) in float32; other channels become 0.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .errors import WisparseError
from .files import write_json

FORMAT = "wisparse-plan"
VERSION = 1
METHODS = ("teal", "wina", "wisparse")
SEMANTICS = (
    "input channel i of each planned linear is kept iff |x_i| * ||W[:, i]||_2 ** alpha > threshold, "
    "W being that linear's weight [out, in] as loaded in float32; other channels become 0"
)


@dataclass
class LayerPlan:
    sparsity: float
    threshold: float
    alpha: float
    shape: tuple[int, int]  # (out_features, in_features)

    @property
    def params(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass
class Plan:
    model: dict
    method: str
    target_sparsity: float
    calibration: dict
    layers: dict[str, LayerPlan]
    groups: list[list[str]] = field(default_factory=list)
    search: dict | None = None

    @property
    def budget(self) -> float:
        """Parameter-weighted mean sparsity over planned linears: the fraction of weight bytes skipped."""
        total = sum(lp.params for lp in self.layers.values())
        return sum(lp.sparsity * lp.params for lp in self.layers.values()) / max(total, 1)

    def to_dict(self) -> dict:
        d = {
            "format": FORMAT,
            "version": VERSION,
            "semantics": SEMANTICS,
            "model": self.model,
            "method": self.method,
            "target_sparsity": self.target_sparsity,
            "budget": round(self.budget, 6),
            "calibration": self.calibration,
            "groups": self.groups,
            "layers": {
                n: {"sparsity": lp.sparsity, "threshold": lp.threshold, "alpha": lp.alpha, "shape": list(lp.shape)}
                for n, lp in self.layers.items()
            },
        }
        if self.search is not None:
            d["search"] = self.search
        return d

    def digest(self) -> str:
        """Hash of the canonical JSON: names a plan in manifests and reports."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()[:16]

    def check_model(self, model: nn.Module) -> None:
        """Refuse a plan made for another model: fingerprint, and every planned linear's name and shape."""
        from .models import fingerprint, get_linear

        fp = fingerprint(model)
        if self.model.get("fingerprint") != fp:
            raise WisparseError(
                f"plan was made for another model ({self.model.get('source')}, fingerprint "
                f"{self.model.get('fingerprint')}); this model's fingerprint is {fp}"
            )
        for name, lp in self.layers.items():
            lin = get_linear(model, name)
            if (lin.out_features, lin.in_features) != tuple(lp.shape):
                raise WisparseError(f"plan layer {name} has shape {list(lp.shape)}, the model's is "
                                    f"{[lin.out_features, lin.in_features]}")


def _num(d: dict, key: str, where: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise WisparseError(f"invalid plan: {where}.{key} must be a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def from_dict(d: dict) -> Plan:
    """Validate a plan dictionary; every problem is one line naming the field."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise WisparseError(f"not a wisparse plan (expected \"format\": \"{FORMAT}\")")
    version = d.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise WisparseError("invalid plan: version must be an integer")
    if version > VERSION:
        raise WisparseError(f"plan version {version} is newer than this tool supports ({VERSION}); upgrade wisparse")
    if version < 1:
        raise WisparseError(f"invalid plan: unknown version {version}")
    model = d.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("fingerprint"), str):
        raise WisparseError("invalid plan: model must be an object with a fingerprint")
    method = d.get("method")
    if method not in METHODS:
        raise WisparseError(f"invalid plan: method must be one of {', '.join(METHODS)}, got {method!r}")
    target = _num(d, "target_sparsity", "plan", 0.0, 1.0)
    layers_in = d.get("layers")
    if not isinstance(layers_in, dict) or not layers_in:
        raise WisparseError("invalid plan: layers must be a non-empty object")
    layers = {}
    for name, lp in layers_in.items():
        where = f"layers[{name!r}]"
        if not isinstance(lp, dict):
            raise WisparseError(f"invalid plan: {where} must be an object")
        shape = lp.get("shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s > 0 for s in shape)):
            raise WisparseError(f"invalid plan: {where}.shape must be [out_features, in_features]")
        layers[name] = LayerPlan(
            sparsity=_num(lp, "sparsity", where, 0.0, 1.0),
            threshold=_num(lp, "threshold", where, 0.0),
            alpha=_num(lp, "alpha", where, 0.0, 4.0),
            shape=(shape[0], shape[1]),
        )
    groups = d.get("groups", [])
    if not isinstance(groups, list) or any(not isinstance(g, list) or not set(g) <= set(layers) for g in groups):
        raise WisparseError("invalid plan: groups must be lists of planned layer names")
    calibration = d.get("calibration", {})
    if not isinstance(calibration, dict):
        raise WisparseError("invalid plan: calibration must be an object")
    return Plan(model=model, method=method, target_sparsity=target, calibration=calibration, layers=layers,
                groups=groups, search=d.get("search"))


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    if not path.is_file():
        raise WisparseError(f"plan file not found: {path}")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WisparseError(f"plan file {path} is not valid JSON: {e}") from e
    return from_dict(d)


def save_plan(plan: Plan, path: str | Path) -> Path:
    return write_json(path, plan.to_dict())
