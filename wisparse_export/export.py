"""`wisparse export`: OUT/dense.onnx, OUT/sparse.onnx (graphs from `onnx_graph.build`), the files the field's
runtimes read beside them (config.json, generation_config.json, genai_config.json, the tokenizer's files) and
OUT/manifest.json, written all or nothing: Optimum's ORTModelForCausalLM (`file_name=`) and onnxruntime-genai
open OUT as it is.

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
from .files import atomic_dir, clean_stale, read_json, write_json
from .identity import weight_sample
from .manifest import FORMAT, MANIFEST, VERSION, owned, read_manifest
from .models import DTYPES, Loaded, fingerprint, get_linear
from .onnx_graph import DOMAIN, IR_VERSION, OP_TYPE, OP_VERSION, OPSET, PLUGIN_ATTRS, Arch, build, counts_of, describe
from .plan import Plan

EXTERNAL_DATA_BYTES = 256 << 20  # weights above this go to a side file (protobuf stops at 2 GiB; big files load slowly)
GENAI_GRAPH = "sparse.onnx"  # the graph genai_config.json names; docs/EXPORT.md shows the overlay that picks dense
# transformers 5's name for a tokenizer backed by tokenizer.json alone; 4.x knows it as PreTrainedTokenizerFast,
# which 5.x keeps as an alias.
TOKENIZER_CLASSES_4X = {"TokenizersBackend": "PreTrainedTokenizerFast"}


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
        if name in TOKENIZER_CLASSES_4X:
            write_json(path, {**config, "tokenizer_class": TOKENIZER_CLASSES_4X[name]})
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
    return {
        "format": FORMAT,
        "version": VERSION,
        "plan": {"digest": plan.digest(), "method": plan.method, "target_sparsity": plan.target_sparsity,
                 "budget": round(plan.budget, 6), "calibration": plan.calibration,
                 "layers": {n: {"sparsity": lp.sparsity, "threshold": lp.threshold, "alpha": lp.alpha}
                            for n, lp in plan.layers.items()}},
        "model": {"source": loaded.source, "architecture": loaded.architecture, "model_type": arch.model_type,
                  "fingerprint": fingerprint(model), "max_positions": arch.max_positions,
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
    }


def export(loaded: Loaded, plan: Plan, out: str | os.PathLike, dtype: str = "float32",
           external_data: bool | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Write OUT/dense.onnx, OUT/sparse.onnx, the runtimes' files (`runtime_files`) and OUT/manifest.json; all or
    nothing.

    Replaces only what an earlier export's manifest names; `log` (default: stderr) hears of stale temporaries of
    a killed export removed beside OUT.
    """
    if dtype not in DTYPES:
        raise WisparseError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    out = Path(out)
    replaces = replaceable(out, loaded)
    model = loaded.model
    plan.check_model(model)
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
        files.update(runtime_files(loaded, describe(model), dtype, tmp))
        manifest = manifest_of(loaded, plan, dtype, files, counts)
        write_json(tmp / MANIFEST, manifest)
    return manifest
