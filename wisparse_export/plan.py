"""The plan file: the one contract between calibration and every later stage (runtime, export, TensorRT).

Format (version 1), readable by any tool without this code:
  {"format": "wisparse-plan", "version": 1, "semantics": "...",
   "model": {"source", "architecture", "fingerprint", "weights": {linear: [value, ...]}},
   "method", "target_sparsity", "budget",
   "calibration": {"text", "sources", "tokens", "seq_len", "seed"},
   "groups": [[linear, ...], ...],                      # linears that share one input (optional)
   "provenance": {"wisparse-export": v, "torch": v, "transformers": v},  # versions that wrote it (optional)
   "layers": {"model.layers.0.mlp.down_proj": {"sparsity": f, "threshold": t, "alpha": a, "shape": [out, in]}},
   "search": {...},                                     # settings and trace of the allocation search (optional)
   "weights": {"format": "fp8_e4m3" | "int8", "scale": "per_output_channel"},  # quantized weights (optional)
   "lm_head": {"format": "fp8_e4m3" | "int8", "scale": "per_output_channel"}}  # quantized lm_head (optional)
Input channel i of a planned linear is kept iff |x_i| * ||W[:, i]||_2 ** alpha > threshold, W as stored
([out, in]) in float32; other channels become 0. The fingerprint hashes parameter names and shapes; "weights"
holds a few values of each planned weight (identity.weight_sample) so that a plan is refused on another model of
the same shapes. Plans written before "weights" existed still load, checked by fingerprint only.
Quantized weights (quant.py): with a top-level "weights" format, W is the dequantized weight of that format (the
weights a quantized deployment computes with), and model.weights samples those; without it (every older plan), W
is the unquantized weight, as before. With "lm_head", the model's output projection is quantized that way too (it
is never sparsified; untied from the embedding first where the two were tied); without it (every older plan), the
lm_head is in the model's dtype.
Provenance, for people (never checked against the running versions): "provenance" holds the package versions that
wrote the plan and "model.revision" the model's revision where known (models.revision); plans without them load.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import WisparseError
from .files import read_json, write_json
from .identity import positions
from .quant import WeightFormat, from_record

FORMAT = "wisparse-plan"
VERSION = 1
METHODS = ("teal", "wina", "wisparse")
SEMANTICS = (
    "input channel i of each planned linear is kept iff |x_i| * ||W[:, i]||_2 ** alpha > threshold, "
    "W being that linear's weight [out, in] as loaded in float32; other channels become 0"
)
FLOAT32_MAX = 3.4028234663852886e38  # thresholds beyond it overflow the float32 comparison every runtime makes
PROVENANCE = ("wisparse-export", "torch", "transformers")


def versions(*packages: str) -> dict[str, str | None]:
    """{package: installed version, or None}: what an artifact records of the software that wrote it."""
    out = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def check_provenance(value, where: str) -> dict | None:
    """An optional {package: version string or null} object (artifacts written before it existed have none)."""
    if value is not None and not (isinstance(value, dict) and all(
            isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in value.items())):
        raise WisparseError(f"{where}provenance must be an object of package: version string (or null)")
    return value


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
    provenance: dict | None = field(default_factory=lambda: versions(*PROVENANCE))  # None: a file without one
    weights: WeightFormat | None = None  # the quantized weight format the plan was made on (None: unquantized)
    lm_head: WeightFormat | None = None  # the lm_head's quantized format (None: the model's dtype)

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
        if self.provenance is not None:
            d["provenance"] = self.provenance
        if self.weights is not None:
            d["weights"] = self.weights.to_dict()
        if self.lm_head is not None:
            d["lm_head"] = self.lm_head.to_dict()
        return d

    def digest(self) -> str:
        """Hash of the canonical JSON: names a plan in manifests and reports."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()[:16]


def _num(d: dict, key: str, where: str, lo: float = -math.inf, hi: float = FLOAT32_MAX, below: bool = False) -> float:
    """A finite number in [lo, hi] ([lo, hi) when `below`)."""
    v = d.get(key)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
    if not ok or (below and v == hi):
        raise WisparseError(f"invalid plan: {where}.{key} must be a number in [{lo:g}, {hi:g}{')' if below else ']'}, "
                            f"got {v!r}")
    return float(v)


def _header(d: dict) -> None:
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise WisparseError(f"not a wisparse plan (expected \"format\": \"{FORMAT}\")")
    version = d.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise WisparseError("invalid plan: version must be an integer")
    if version > VERSION:
        raise WisparseError(f"plan version {version} is newer than this tool supports ({VERSION}); upgrade wisparse")
    if version < 1:
        raise WisparseError(f"invalid plan: unknown version {version}")


def _layers(d: dict) -> dict[str, LayerPlan]:
    layers_in = d.get("layers")
    if not isinstance(layers_in, dict) or not layers_in:
        raise WisparseError("invalid plan: layers must be a non-empty object")
    layers = {}
    for name, lp in layers_in.items():
        where = f"layers[{name!r}]"
        if not isinstance(lp, dict):
            raise WisparseError(f"invalid plan: {where} must be an object")
        shape = lp.get("shape")
        if not (isinstance(shape, list) and len(shape) == 2
                and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
            raise WisparseError(f"invalid plan: {where}.shape must be [out_features, in_features]")
        layers[name] = LayerPlan(
            sparsity=_num(lp, "sparsity", where, 0.0, 1.0, below=True),
            threshold=_num(lp, "threshold", where, 0.0),  # finite in float32: kernels compare in float32
            alpha=_num(lp, "alpha", where, 0.0, 4.0),
            shape=(shape[0], shape[1]),
        )
    return layers


def _model(d: dict, layers: dict[str, LayerPlan]) -> dict:
    """source and fingerprint strings; optional architecture; optional weights: a sample per planned linear."""
    model = d.get("model")
    if not isinstance(model, dict):
        raise WisparseError("invalid plan: model must be an object")
    for key in ("source", "fingerprint", "architecture"):
        if not isinstance(model.get(key), str) and (key != "architecture" or key in model):
            raise WisparseError(f"invalid plan: model.{key} must be a string, got {model.get(key)!r}")
    if model.get("revision") is not None and not isinstance(model["revision"], str):
        raise WisparseError(f"invalid plan: model.revision must be a string or null, got {model['revision']!r}")
    weights = model.get("weights")
    if weights is None and "weights" not in model:
        return model
    if not isinstance(weights, dict) or set(weights) != set(layers):
        raise WisparseError("invalid plan: model.weights must be an object with one entry per planned layer")
    for name, values in weights.items():
        n = len(positions(layers[name].shape))
        if not (isinstance(values, list) and len(values) == n and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            raise WisparseError(f"invalid plan: model.weights[{name!r}] must be a list of {n} numbers")
    return model


def _groups(d: dict, layers: dict[str, LayerPlan]) -> list[list[str]]:
    """Lists of planned layer names (linears that share one input); a name in at most one group."""
    groups = d.get("groups", [])
    if not isinstance(groups, list):
        raise WisparseError("invalid plan: groups must be a list of lists of planned layer names")
    seen: set[str] = set()
    for i, g in enumerate(groups):
        if not isinstance(g, list) or not g or not all(isinstance(n, str) and n in layers for n in g):
            raise WisparseError(f"invalid plan: groups[{i}] must be a non-empty list of planned layer names")
        again = next((n for n in g if n in seen or g.count(n) > 1), None)
        if again is not None:
            raise WisparseError(f"invalid plan: groups[{i}] names {again} again (a linear is in one group at most)")
        seen.update(g)
    return groups


def _calibration(d: dict) -> dict:
    calibration = d.get("calibration", {})
    if not isinstance(calibration, dict):
        raise WisparseError("invalid plan: calibration must be an object")
    sources = calibration.get("sources")
    if sources is not None and not (isinstance(sources, list) and all(isinstance(s, str) for s in sources)):
        raise WisparseError(f"invalid plan: calibration.sources must be null or a list of strings, got {sources!r}")
    return calibration


def from_dict(d: dict) -> Plan:
    """Validate a plan dictionary; every problem is one line naming the field."""
    _header(d)
    method = d.get("method")
    if method not in METHODS:
        raise WisparseError(f"invalid plan: method must be one of {', '.join(METHODS)}, got {method!r}")
    target = _num(d, "target_sparsity", "plan", 0.0, 1.0, below=True)
    layers = _layers(d)
    search = d.get("search")
    if search is not None and not isinstance(search, dict):
        raise WisparseError("invalid plan: search must be an object")
    return Plan(model=_model(d, layers), method=method, target_sparsity=target, calibration=_calibration(d),
                layers=layers, groups=_groups(d, layers), search=search,
                provenance=check_provenance(d.get("provenance"), "invalid plan: "),
                weights=from_record(d["weights"], "invalid plan: ") if "weights" in d else None,
                lm_head=from_record(d["lm_head"], "invalid plan: ", "lm_head") if "lm_head" in d else None)


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file (strict JSON: a duplicated key is refused, not silently overwritten)."""
    return from_dict(read_json(path, "plan file"))


def save_plan(plan: Plan, path: str | Path) -> Path:
    return write_json(path, plan.to_dict())
