"""`wisparse export`: OUT/dense.onnx, OUT/sparse.onnx (graphs from `onnx_graph.build`), the weights file both
reference (OUT/weights.onnx.data), the files the field's runtimes read beside them (config.json,
generation_config.json, genai_config.json, the tokenizer's files) and OUT/manifest.json, written all or nothing:
Optimum's ORTModelForCausalLM (`file_name=`) and onnxruntime-genai open OUT as it is.

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
from .files import atomic_dir, clean_stale, read_json, write_json
from .identity import weight_sample
from .manifest import FORMAT, MANIFEST, PROVENANCE, VERSION, owned, read_manifest
from .models import DTYPES, Loaded, check_plan, fingerprint, get_linear, offloaded, revision
from .onnx_graph import (
    DOMAIN,
    IR_VERSION,
    OP_TYPE,
    OP_VERSION,
    OP_VERSION_QUANTIZED,
    OPSET,
    PLUGIN_ATTRS,
    Arch,
    WeightsFile,
    build,
    counts_of,
    describe,
)
from .plan import Plan, versions

WEIGHTS = "weights.onnx.data"  # the external data file both graphs reference
INLINE_LIMIT = 2 << 30  # protobuf's limit for one file: beyond it, weights must be external
GENAI_GRAPH = "sparse.onnx"  # the graph genai_config.json names; docs/EXPORT.md shows the overlay that picks dense
# transformers 5's name for a tokenizer backed by tokenizer.json alone; 4.x knows it as PreTrainedTokenizerFast,
# which 5.x keeps as an alias.
TOKENIZER_CLASSES_4X = {"TokenizersBackend": "PreTrainedTokenizerFast"}


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
        for role in ("dense", "sparse"):
            proto = build(model, plan, dtype, store, dense=role == "dense")
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


def hf_config(loaded: Loaded, dtype: str) -> dict:
    """config.json: the model's config in the export dtype, readable by transformers 4.x and 5.x. 5.x keeps RoPE in
    `rope_parameters` (per layer type for Gemma3), 4.x reads `rope_theta`, `rope_scaling` and Gemma3's
    `rope_local_base_freq`: both spellings are written, and 4.x's `torch_dtype` beside `dtype`."""
    config = {**loaded.model.config.to_dict(), "architectures": [loaded.architecture], "dtype": dtype,
              "torch_dtype": dtype, "use_cache": True}
    rope = config.get("rope_parameters")
    if isinstance(rope, dict):
        full = rope.get("full_attention", rope)
        legacy = {"rope_theta": full.get("rope_theta")}
        if full.get("rope_type", "default") != "default":
            legacy["rope_scaling"] = {k: v for k, v in full.items() if k != "rope_theta"}
        if "sliding_attention" in rope:
            legacy["rope_local_base_freq"] = rope["sliding_attention"].get("rope_theta")
        config.update({k: v for k, v in legacy.items() if config.get(k) is None})
    return config


def genai_config(arch: Arch, config: dict, gen: dict, graph: str) -> dict:
    """genai_config.json for onnxruntime-genai: the decoder graph, its input/output names, and the search settings
    of the model's generation config. The cache is not shared between past and present (the graph concatenates)."""
    eos = gen.get("eos_token_id", config.get("eos_token_id"))
    pad = gen.get("pad_token_id", config.get("pad_token_id"))
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []}, "filename": graph,
        "head_size": arch.head_dim, "hidden_size": config["hidden_size"], "num_attention_heads": arch.heads,
        "num_hidden_layers": arch.layers, "num_key_value_heads": arch.kv_heads,
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                   "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"}}
    search = {"max_length": arch.max_positions, "min_length": 0, "num_beams": 1, "num_return_sequences": 1,
              "past_present_share_buffer": False, "do_sample": bool(gen.get("do_sample", False)),
              "temperature": gen.get("temperature", 1.0), "top_k": gen.get("top_k", 50),
              "top_p": gen.get("top_p", 1.0), "repetition_penalty": gen.get("repetition_penalty", 1.0)}
    return {"model": {"type": arch.model_type, "bos_token_id": gen.get("bos_token_id", config.get("bos_token_id")),
                      "eos_token_id": eos, "pad_token_id": (eos[0] if isinstance(eos, list) else eos) if pad is None
                      else pad, "context_length": arch.max_positions, "vocab_size": arch.vocab, "decoder": decoder},
            "search": search}


def save_tokenizer(tokenizer, folder: Path) -> list[str]:
    """The tokenizer's files at the folder's root (where both runtimes look), with a `tokenizer_class` that
    transformers 4.x reads too; returns their names."""
    before = set(os.listdir(folder))
    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    if path.is_file():
        config = read_json(path, "tokenizer_config.json")
        name = config.get("tokenizer_class")
        # The graphs take no token_type_ids: a 4.x fast tokenizer would return them, and generate() refuses them.
        write_json(path, {**config, "tokenizer_class": TOKENIZER_CLASSES_4X.get(name, name),
                          "model_input_names": ["input_ids", "attention_mask"]})
    return sorted(set(os.listdir(folder)) - before)


def runtime_files(loaded: Loaded, arch: Arch, dtype: str, folder: Path) -> dict:
    """What Optimum and onnxruntime-genai read beside the graphs, written into `folder`: roles -> names, for the
    manifest's `files` (tokenizer: the list of its files, or None for a model without one)."""
    config = hf_config(loaded, dtype)
    gen = loaded.model.generation_config.to_diff_dict()
    tokenizer = None if loaded.tokenizer is None else save_tokenizer(loaded.tokenizer, folder)
    write_json(folder / "config.json", config)
    write_json(folder / "generation_config.json", gen)
    write_json(folder / "genai_config.json", genai_config(arch, config, gen, GENAI_GRAPH))
    return {"config": "config.json", "generation_config": "generation_config.json",
            "genai_config": "genai_config.json", "tokenizer": tokenizer}


def manifest_of(loaded: Loaded, plan: Plan, dtype: str, files: dict, counts: dict) -> dict:
    """manifest.json: what was exported, from which model and plan, the graphs' shape and the custom op."""
    model, arch = loaded.model, describe(loaded.model)
    quantized = {"weights": plan.weights.to_dict()} if plan.weights is not None else {}
    head = {"lm_head": plan.lm_head.to_dict()} if plan.lm_head is not None else {}
    op = {**PLUGIN_ATTRS, "version": OP_VERSION_QUANTIZED, "plugin_version": str(OP_VERSION_QUANTIZED),
          "weight_inputs": "W_q [in, out] (input 4), W_scale [out] (input 5)"} if quantized else \
        {"version": OP_VERSION, **PLUGIN_ATTRS}
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
        "custom_op": {"domain": DOMAIN, "op_type": OP_TYPE, **op, "weight_layout": "[in, out]"},
        "counts": {"sparse_linear_nodes": counts["sparse"]["sparse_linear"],
                   "dense_linear_nodes_in_sparse": counts["sparse"]["dense_linear"],
                   "dense_linear_nodes_in_dense": counts["dense"]["dense_linear"]},
        "provenance": versions(*PROVENANCE),
        **quantized,
        **head,
    }


def export(loaded: Loaded, plan: Plan, out: str | os.PathLike, dtype: str = "float32",
           external_data: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Write OUT/dense.onnx, OUT/sparse.onnx, OUT/weights.onnx.data (shared), the runtimes' files
    (`runtime_files`) and OUT/manifest.json; all or nothing. external_data=False puts the weights inside each graph
    instead (twice).

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
    if offloaded(model):
        raise WisparseError("export reads every weight: load the model without cpu/disk offload in its device map")
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
        files.update(runtime_files(loaded, describe(model), dtype, tmp))
        manifest = manifest_of(loaded, plan, dtype, files, counts)
        write_json(tmp / MANIFEST, manifest)
    return manifest
