"""Random-weight models of real shapes, for speed and capacity planning at the sizes users deploy, no download.

`random:NAME` names a config shipped in calibration/configs/ (the published config.json of a real model);
`random:/path/config.json` takes any Hugging Face config. The model is built on the meta device, allocated on the
target device in the target dtype, then filled in place: no float32 CPU copy, nothing held twice. Each matrix
comes from a counter-based hash of (seed, parameter name, element index) in integer arithmetic, so the same seed
and config give the same weights on every device, up to the dtype's rounding: a plan calibrated on a GPU in
bfloat16 names the very weights that a float32 CPU export rebuilds. Matrices are uniform with std 1/sqrt(fan in),
so activations keep a real spread through 100+ layers; norms and rotary tables get the model class's own init.
The tokenizer is the embedded SmolLM2 one, cut to the config's vocabulary where that is smaller (Mistral's).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import math
from pathlib import Path

import torch
from torch import nn

from .errors import WisparseError
from .files import parse_json, read_json

PREFIX = "random:"
NOTE = "random weights: for speed and capacity planning; accuracy figures are meaningless"
ALIASES = {"llama3-8b": "llama-3.1-8b"}  # the shape names `wisparse bench --shape` had before the configs
CHUNK = 1 << 22  # elements filled per step: bounds the hash's int64 temporaries (32 MiB each)
MASK = 0xFFFFFFFF


def _configs():
    return importlib.resources.files("wisparse_export.recipes").joinpath("configs")


def names() -> list[str]:
    """The shipped configs, by name (`random:NAME`)."""
    return sorted(p.name[: -len(".json")] for p in _configs().iterdir() if p.name.endswith(".json"))


def _config_dict(spec: str) -> tuple[dict, str]:
    """The config's JSON and the model's label: random:NAME, or random:/absolute/path.json for a file (a model
    folder stands for its config.json)."""
    if spec.endswith(".json") or "/" in spec or spec.startswith(("~", ".")):
        path = Path(spec).expanduser()
        path = path / "config.json" if path.is_dir() else path
        return read_json(path, "model config"), PREFIX + str(path.resolve())
    name = ALIASES.get(spec, spec)
    if name not in names():
        raise WisparseError(f"unknown random model {spec!r}; choose one of {', '.join(names())}, "
                            "or random:/path/config.json")
    return parse_json(_configs().joinpath(f"{name}.json").read_text(), f"config {name}"), PREFIX + name


def read_config(spec: str):
    """(transformers config, label) for `spec` (the part after random:); refuses what is not a causal LM."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    values, label = _config_dict(spec)
    kind = values.pop("model_type", None)
    if not isinstance(kind, str) or kind not in CONFIG_MAPPING:
        raise WisparseError(f"{label}: model_type {kind!r} is not a model type transformers knows")
    try:
        config = CONFIG_MAPPING[kind](**values)
    except (TypeError, ValueError, StrictDataclassError) as e:
        raise WisparseError(f"{label}: bad config: {_reason(e)}") from None
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise WisparseError(f"{label}: model_type {kind!r} is not a causal language model")
    return config, label


def _reason(e: Exception) -> str:
    """The first line of what went wrong (a validation error's cause says more than its wrapper)."""
    if isinstance(e, KeyError):  # a name the model's tables lack, such as an activation
        return f"unknown name {e}"
    return (str(e.__cause__ or e).strip().splitlines() or [type(e).__name__])[0]


def meta_model(config, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """The model with no storage: shapes, parameter counts and module layout at any size, in no memory."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise WisparseError(f"cannot build a model from this config: {_reason(e)}") from None


def parameter_count(config) -> int:
    """Distinct parameters (a tied embedding counts once), computed on the meta device."""
    return sum(p.numel() for p in meta_model(config).parameters())


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply rounds), in place in int64: the same bits on every device."""
    for mult in (0x7FEB352D, 0x1B873593, 0x2C1B3C6D):  # odd, below 2**31: products stay below 2**63
        x ^= x >> 16
        x *= mult
        x &= MASK
    return x ^ (x >> 16)


@torch.no_grad()
def _fill(p: torch.Tensor, seed: int, name: str) -> None:
    """p[i] = uniform of std 1/sqrt(fan in) from the hash of (seed, name, i), exact in float32, chunk by chunk."""
    flat = p.view(-1)
    scale = math.sqrt(3.0 / p.shape[-1]) / (1 << 23)  # U(-a, a) has std a / sqrt(3); 24 bits centred below
    for start in range(0, flat.numel(), CHUNK):  # a chunk never straddles a multiple of 2**32
        key = hashlib.sha256(f"{seed}:{name}:{start >> 32}".encode()).digest()
        low = start & MASK
        bits = _mix(torch.arange(low, low + min(CHUNK, flat.numel() - start), device=p.device)
                    ^ int.from_bytes(key[:4], "little"))
        flat[start: start + bits.numel()] = ((bits >> 8) - (1 << 23)).float().mul_(scale)


def placement(model: nn.Module, device_map: str | dict) -> dict:
    """{module: device} for a model on the meta device: accelerate's plan for "auto" / "balanced" / "sequential"
    (as transformers computes it for from_pretrained), or the given map once it is known to place every tensor."""
    from accelerate.utils import get_balanced_memory, get_max_memory, infer_auto_device_map

    if isinstance(device_map, dict):
        return check_map(model, device_map)
    split = model._no_split_modules
    memory = get_max_memory() if device_map == "sequential" else get_balanced_memory(
        model, no_split_module_classes=split)
    return infer_auto_device_map(model, max_memory=memory, no_split_module_classes=split)


def check_map(model: nn.Module, device_map: dict) -> dict:
    """The map itself, once every name in it is a module of the model and every tensor is placed (transformers
    ignores unknown names and places what a map leaves out by itself)."""
    from accelerate.utils import check_device_map

    unknown = [k for k in device_map if k and k not in dict(model.named_modules())]
    if unknown:
        raise WisparseError(f"device map names modules the model does not have: {', '.join(unknown[:3])}")
    try:
        check_device_map(model, device_map)
    except ValueError as e:
        missing = _reason(e).split(": ", 1)[-1].split(", ")
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise WisparseError(f"device map leaves tensors unplaced: {', '.join(missing[:3])}{more}") from None
    return device_map


def _dispatch(model: nn.Module, device_map: dict, offload_folder: str | None) -> None:
    """accelerate's hooks: inputs follow each block to its device; "cpu" and "disk" blocks are offloaded."""
    from accelerate import dispatch_model

    dispatch_model(model, device_map, offload_dir=offload_folder, skip_keys=model._skip_keys_device_placement)
    model.hf_device_map = device_map  # as from_pretrained records it


@torch.no_grad()
def build(config, dtype: torch.dtype, device: str | torch.device, seed: int = 0, device_map: str | dict | None = None,
          offload_folder: str | None = None) -> nn.Module:
    """The model on `device` in `dtype`, seeded weights filled in place (eval mode); with a device map, each module
    is allocated and filled on its own device (offloaded ones on the CPU first), then dispatched by accelerate:
    the same values as on one device."""
    model = meta_model(config, dtype)
    where = None if device_map is None else placement(model, device_map)
    if where is None:
        model.to_empty(device=device)
    for name, dev in (where or {}).items():
        (model.get_submodule(name) if name else model).to_empty(device="cpu" if dev == "disk" else dev)
    model.tie_weights()  # to_empty gives a tied head its own storage
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            _fill(p, seed, name)
            p._is_hf_initialized = True  # the class's init below leaves the matrices alone
    model.initialize_weights()  # norms (ones, or zeros where the norm adds 1), biases, rotary and scale buffers
    if where is not None:
        _dispatch(model, where, offload_folder)
    return model.eval()


@functools.lru_cache(maxsize=1)
def _gguf_tokenizer(gguf: Path):
    """The GGUF's tokenizer from its metadata (the weights stay unread). Cached: parsing 49k tokens takes seconds."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def tokenizer(gguf: Path, vocab_size: int):
    """The GGUF's tokenizer, cut to `vocab_size` tokens where it has more, so every id it gives is in the model.

    Byte-level BPE adds one token per merge, in id order: dropping the tokens past the vocabulary and the merges
    that make them leaves a tokenizer that still spells any text, with the tokens kept.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = _gguf_tokenizer(gguf)
    if vocab_size >= len(tok):
        return tok
    spec = json.loads(tok.backend_tokenizer.to_str())
    merged = ["".join(m.split(" ") if isinstance(m, str) else m) for m in spec["model"]["merges"]]
    made = set(merged)
    base = [i for t, i in spec["model"]["vocab"].items() if t not in made] + [a["id"] for a in spec["added_tokens"]]
    if max(base) >= vocab_size:
        raise WisparseError(f"vocab_size {vocab_size} is below the embedded tokenizer's {max(base) + 1} byte and "
                            "special tokens")
    vocab = {t: i for t, i in spec["model"]["vocab"].items() if i < vocab_size}
    spec["model"]["vocab"] = vocab
    spec["model"]["merges"] = [m for m, t in zip(spec["model"]["merges"], merged, strict=True) if t in vocab]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), **tok.special_tokens_map)
