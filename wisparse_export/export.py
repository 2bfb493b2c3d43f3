"""`wisparse export`: OUT/dense.onnx, OUT/sparse.onnx (graphs from `onnx_graph.build`), the weights file both
reference (OUT/weights.onnx.data), OUT/tokenizer/ and OUT/manifest.json, written all or nothing.

At scale: no float32 copy of the model (the weights are read in whatever dtype and on whatever device they were
loaded, cast and streamed to disk one tensor at a time), and each weight is written once.

OUT is the user's folder: export replaces only the entries a previous export's manifest names (its graphs, their
weights, tokenizer, and the engines `wisparse build` recorded, built from the graphs being replaced), refuses an
OUT holding anything else, and never touches what the manifest does not name.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import onnx
import torch
from onnx import helper

from .errors import WisparseError
from .files import atomic_dir, clean_stale, write_json
from .identity import weight_sample
from .manifest import FORMAT, MANIFEST, PROVENANCE, VERSION, owned, read_manifest
from .models import DTYPES, Loaded, check_plan, fingerprint, get_linear, revision
from .onnx_graph import (
    DOMAIN,
    IR_VERSION,
    OP_TYPE,
    OP_VERSION,
    OPSET,
    PLUGIN_ATTRS,
    WeightsFile,
    build,
    counts_of,
    describe,
)
from .plan import Plan, versions

WEIGHTS = "weights.onnx.data"  # the external data file both graphs reference
INLINE_LIMIT = 2 << 30  # protobuf's limit for one file: beyond it, weights must be external


def weight_bytes(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Bytes of the model's parameters at `dtype` (a tied matrix counts once): what the weights file holds."""
    return sum(p.numel() for p in model.parameters()) * torch.empty((), dtype=dtype).element_size()


def save(proto: onnx.ModelProto, path: Path) -> None:
    """Write one graph (its weights already external, or inline when small)."""
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def validate_graph(path: Path) -> None:
    """onnx.checker on the written file (it follows external data by path, without loading it)."""
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:  # a bug of ours, not the user's: keep the traceback
        raise RuntimeError(f"exported {path.name} fails onnx.checker: {str(e).splitlines()[0]}") from e


def write_graphs(model: torch.nn.Module, plan: Plan, dtype: torch.dtype, tmp: Path,
                 external: bool) -> tuple[dict, dict]:
    """dense.onnx and sparse.onnx in `tmp`; with `external`, their weights streamed once into WEIGHTS. Returns
    (counts per role, files)."""
    counts, files = {}, {"dense": "dense.onnx", "sparse": "sparse.onnx", "weights": WEIGHTS if external else None}
    with WeightsFile(tmp / WEIGHTS) if external else nullcontext() as store:
        for role, p in (("dense", None), ("sparse", plan)):
            proto = build(model, p, dtype, store)
            helper.set_model_props(proto, {**{q.key: q.value for q in proto.metadata_props},
                                           "wisparse.plan": plan.digest(), "wisparse.format": f"{FORMAT}/{VERSION}"})
            counts[role] = counts_of(proto)
            save(proto, tmp / files[role])
            del proto
    for role in ("dense", "sparse"):
        validate_graph(tmp / files[role])
    return counts, files


def replaceable(out: Path, loaded: Loaded) -> list[str]:
    """The entries of OUT an export may replace; refuses (one line) an OUT that is not ours to write."""
    target = out.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise WisparseError(f"-o {out} contains the current folder; export into a new folder")
    source = Path(loaded.source)
    if source.exists() and (target == source.resolve() or target in source.resolve().parents):
        raise WisparseError(f"-o {out} contains the model's files ({loaded.source}); export into a new folder")
    if not out.exists():
        return []
    if not out.is_dir():
        raise WisparseError(f"{out} is a file; choose a folder to export into")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return []
    if MANIFEST not in entries:
        raise WisparseError(f"{out} holds {entries[0]}, which wisparse export did not write; choose another folder")
    try:
        ours = owned(read_manifest(out))
    except WisparseError as e:
        raise WisparseError(f"{out} holds a manifest.json wisparse cannot replace ({e}); choose another folder") \
            from None
    foreign = [e for e in entries if e not in ours]
    if foreign:
        raise WisparseError(f"{out} holds {foreign[0]}, which its manifest does not name; move it or choose "
                            "another folder")
    return entries


def manifest_of(loaded: Loaded, plan: Plan, dtype: str, files: dict, counts: dict) -> dict:
    """manifest.json: what was exported, from which model and plan, the graphs' shape and the custom op."""
    model, arch = loaded.model, describe(loaded.model)
    return {
        "format": FORMAT,
        "version": VERSION,
        "plan": {"digest": plan.digest(), "method": plan.method, "target_sparsity": plan.target_sparsity,
                 "budget": round(plan.budget, 6), "calibration": plan.calibration,
                 "layers": {n: {"sparsity": lp.sparsity, "threshold": lp.threshold, "alpha": lp.alpha}
                            for n, lp in plan.layers.items()}},
        "model": {"source": loaded.source, "architecture": loaded.architecture, "model_type": arch.model_type,
                  "revision": revision(loaded), "fingerprint": fingerprint(model), "max_positions": arch.max_positions,
                  "weights": {n: weight_sample(get_linear(model, n).weight) for n in plan.layers}},
        "opset": OPSET,
        "ir_version": IR_VERSION,
        "dtype": dtype,
        "files": files,
        "graph": {"layers": arch.layers, "kv_heads": arch.kv_heads, "head_dim": arch.head_dim,
                  "vocab": arch.vocab, "sliding_windows": sorted({w for w in arch.windows if w}),
                  "inputs": ["input_ids", "attention_mask", "position_ids", "past_key_values.{i}.key",
                             "past_key_values.{i}.value"],
                  "outputs": ["logits", "present.{i}.key", "present.{i}.value"]},
        "custom_op": {"domain": DOMAIN, "op_type": OP_TYPE, "version": OP_VERSION, **PLUGIN_ATTRS,
                      "weight_layout": "[in, out]"},
        "counts": {"sparse_linear_nodes": counts["sparse"]["sparse_linear"],
                   "dense_linear_nodes_in_sparse": counts["sparse"]["dense_linear"],
                   "dense_linear_nodes_in_dense": counts["dense"]["dense_linear"]},
        "provenance": versions(*PROVENANCE),
    }


def export(loaded: Loaded, plan: Plan, out: str | os.PathLike, dtype: str = "float32",
           external_data: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Write OUT/dense.onnx, OUT/sparse.onnx, OUT/weights.onnx.data (shared), OUT/tokenizer/ and
    OUT/manifest.json; all or nothing. external_data=False puts the weights inside each graph instead (twice).

    The model may be in any dtype and on any device: weights are cast to `dtype` and streamed to the file one
    tensor at a time; thresholds use the column norms of each weight upcast to float32 alone. Replaces only what
    an earlier export's manifest names; `log` (default: stderr) hears of stale temporaries of a killed export
    removed beside OUT.
    """
    if dtype not in DTYPES:
        raise WisparseError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    out = Path(out)
    replaces = replaceable(out, loaded)
    model = loaded.model
    check_plan(model, plan)
    if not external_data and weight_bytes(model, DTYPES[dtype]) >= INLINE_LIMIT:
        raise WisparseError(f"the weights are {weight_bytes(model, DTYPES[dtype]) / 2**30:.1f} GiB at {dtype}: too "
                            "large to keep inside the graphs (2 GiB per file); export with external data")
    stale = clean_stale(out)
    if stale:
        (log or (lambda s: print(s, file=sys.stderr)))(
            f"removed {len(stale)} temporary folder(s) an interrupted export left beside {out}: "
            + ", ".join(p.name for p in stale))
    with torch.no_grad(), atomic_dir(out, replaces) as tmp:
        counts, files = write_graphs(model, plan, DTYPES[dtype], tmp, external_data)
        files["tokenizer"] = None
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp / "tokenizer")
            files["tokenizer"] = "tokenizer"
        manifest = manifest_of(loaded, plan, dtype, files, counts)
        write_json(tmp / MANIFEST, manifest)
    return manifest
