"""`wisparse export`: OUT/dense.onnx, OUT/sparse.onnx (graphs from `onnx_graph.build`), OUT/tokenizer/ and
OUT/manifest.json, written all or nothing.

OUT is the user's folder: export replaces only the entries a previous export's manifest names (its graphs, their
weights, tokenizer, and the engines `wisparse build` recorded, built from the graphs being replaced), refuses an
OUT holding anything else, and never touches what the manifest does not name.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from onnx import helper

from .errors import WisparseError
from .files import atomic_dir, clean_stale, write_json
from .identity import weight_sample
from .manifest import FORMAT, MANIFEST, PROVENANCE, VERSION, owned, read_manifest
from .models import DTYPES, Loaded, check_plan, fingerprint, get_linear, revision
from .onnx_graph import DOMAIN, IR_VERSION, OP_TYPE, OP_VERSION, OPSET, PLUGIN_ATTRS, build, counts_of, describe
from .plan import Plan, versions

EXTERNAL_DATA_BYTES = 256 << 20  # weights above this go to a side file (protobuf stops at 2 GiB; big files load slowly)


def save(proto: onnx.ModelProto, path: Path, external: bool | None = None) -> str | None:
    """Write one model, weights in `<name>.data` beside it when large (or when asked), then run onnx.checker.
    Returns the external data file's name, if any."""
    size = sum(len(t.raw_data) for t in proto.graph.initializer)
    external = size > EXTERNAL_DATA_BYTES if external is None else external
    data = f"{path.name}.data" if external else None
    if external:
        onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                        size_threshold=1024)
    else:
        onnx.save_model(proto, path)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:  # a bug of ours, not the user's: keep the traceback
        raise RuntimeError(f"exported {path.name} fails onnx.checker: {str(e).splitlines()[0]}") from e
    return data


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
           external_data: bool | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Write OUT/dense.onnx, OUT/sparse.onnx, OUT/tokenizer/ and OUT/manifest.json; all or nothing.

    Replaces only what an earlier export's manifest names; `log` (default: stderr) hears of stale temporaries of
    a killed export removed beside OUT.
    """
    if dtype not in DTYPES:
        raise WisparseError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    out = Path(out)
    replaces = replaceable(out, loaded)
    model = loaded.model
    check_plan(model, plan)
    if next(model.parameters()).dtype != torch.float32:
        raise WisparseError("export reads the model in float32 (thresholds are defined on float32 weights); "
                            "load it with dtype float32")
    stale = clean_stale(out)
    if stale:
        (log or (lambda s: print(s, file=sys.stderr)))(
            f"removed {len(stale)} temporary folder(s) an interrupted export left beside {out}: "
            + ", ".join(p.name for p in stale))
    with torch.no_grad(), atomic_dir(out, replaces) as tmp:
        counts, files = {}, {}
        for role, p in (("dense", None), ("sparse", plan)):
            proto = build(model, p, DTYPES[dtype])
            helper.set_model_props(proto, {**{q.key: q.value for q in proto.metadata_props},
                                           "wisparse.plan": plan.digest(), "wisparse.format": f"{FORMAT}/{VERSION}"})
            counts[role] = counts_of(proto)
            files[role], files[f"{role}_data"] = f"{role}.onnx", save(proto, tmp / f"{role}.onnx", external_data)
            del proto
        files["tokenizer"] = None
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp / "tokenizer")
            files["tokenizer"] = "tokenizer"
        manifest = manifest_of(loaded, plan, dtype, files, counts)
        write_json(tmp / MANIFEST, manifest)
    return manifest
