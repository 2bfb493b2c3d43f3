"""Sparse checkpoints: a Hugging Face model folder with its plan beside the weights.

`save` writes `save_pretrained`'s folder (the dense model's keys and tensors: `apply` keeps them), the plan as
`wisparse_plan.json`, and names that file in `config.json` (`"wisparse_plan"`), so the folder loads anywhere as the
dense model and `load` gives it back sparse. The plan's weight samples tie it to these weights: `load` refuses a
folder whose weights were changed after the plan was made.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .errors import WisparseError
from .files import atomic_dir, read_json, write_json
from .models import Loaded, check_plan, load_model, quantize_weights
from .plan import Plan, load_plan, save_plan
from .runtime import apply

PLAN_FILE = "wisparse_plan.json"
CONFIG_KEY = "wisparse_plan"


def save(model: nn.Module, plan: Plan, folder: str | os.PathLike, tokenizer=None) -> Path:
    """Write a new (or empty) folder: model weights and config, tokenizer if given, the plan beside them."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise WisparseError(f"{folder} exists and is not an empty folder; save the checkpoint into a new folder")
    check_plan(model, plan)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_plan(plan, tmp / PLAN_FILE)
        config = read_json(tmp / "config.json", "config.json")
        write_json(tmp / "config.json", {**config, CONFIG_KEY: PLAN_FILE})
    return folder


def plan_path(folder: str | os.PathLike) -> Path:
    """The plan file a checkpoint's config.json names (a plain file name inside the folder)."""
    folder = Path(folder)
    name = read_json(folder / "config.json", "config.json").get(CONFIG_KEY)
    if name is None:
        raise WisparseError(f"{folder} is not a sparse checkpoint: its config.json names no {CONFIG_KEY}")
    if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
        raise WisparseError(f"{folder}/config.json: {CONFIG_KEY} must be a plain file name, got {name!r}")
    path = folder / name
    if path.is_symlink() or not path.is_file():
        raise WisparseError(f"{path} is missing or not a plain file")
    return path


def load(folder: str | os.PathLike, dtype: str | None = None, device: str | None = None,
         progress: bool = True) -> tuple[Loaded, Plan]:
    """The checkpoint's model with its plan applied (checked against the weights), and the plan; quantized first in
    the plan's weight and lm_head formats, if it has them (the folder holds the dequantized weights, which quantize
    back to themselves; a head quantized from a tied one was saved untied)."""
    path = plan_path(folder)
    plan = load_plan(path)
    loaded = load_model(str(folder), dtype, device, progress=progress)
    apply(quantize_weights(loaded.model, plan.weights, plan.lm_head), plan)
    return loaded, plan
