"""Test helpers: tiny random decoders (Llama, Qwen2, Gemma3, ...) saved as model folders with a byte-level
tokenizer, and plans for them with thresholds from per-linear score quantiles on random inputs.

Kept out of conftest.py so any test file can import them (`from _plans import ...`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wisparse_export import calibration
from wisparse_export.calibration import uniform
from wisparse_export.models import Loaded, find_blocks, get_linear
from wisparse_export.ort import GraphSession
from wisparse_export.plan import Plan, save_plan
from wisparse_export.runtime import apply, remove
from wisparse_export.scores import channel_scores, column_norms


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


HAS_NVRTC = installed("cuda.bindings.nvrtc")
nvrtc = pytest.mark.skipif(not HAS_NVRTC, reason="NVRTC (cuda-python) is not installed")
gpu = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_NVRTC), reason="needs a CUDA GPU and cuda-python")

VOCAB = 260  # 256 bytes + 4 specials

COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
              pad_token_id=0, tie_word_embeddings=False)

CONFIGS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(rope_theta=10000.0)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),  # q/k/v with bias, tied head
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(sliding_window=8, layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=16,
                    final_logit_softcapping=30.0, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=8)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(sliding_window=8, query_pre_attn_scalar=16, attn_logit_softcapping=50.0,
                    final_logit_softcapping=30.0)),
}


def tokenizer():
    """A byte-level BPE tokenizer with no merges: every UTF-8 byte is a token; adds BOS like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({ch: 4 + i for i, ch in enumerate(sorted(alphabet))})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def tiny_model(kind: str, seed: int = 0) -> torch.nn.Module:
    import transformers

    config_cls, model_cls, extra = CONFIGS[kind]
    config = getattr(transformers, config_cls)(**{**COMMON, **extra})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # random init is tiny; larger weights give activations with a real spread
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0 if kind.startswith("gemma") else 1.0, 0.1)
            else:
                p.normal_(0.0, 0.08)
    return model


def save_tiny(kind: str, folder: Path, seed: int = 0) -> Path:
    """A model folder (config, weights, tokenizer) that `load_model(folder)` and `--model folder` accept."""
    model = tiny_model(kind, seed)
    model.save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder


@torch.no_grad()
def make_plan(loaded: Loaded, sparsity: float = 0.5, alpha: float = 1.0, seed: int = 0, n: int = 4,
              seq_len: int = 32) -> Plan:
    """Every decoder linear at `sparsity`: thresholds are score quantiles over random token ids."""
    model = loaded.model
    blocks = loaded.blocks or find_blocks(model)
    names = [n for b in blocks for n in b.linears]
    scores: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    norms = {n: column_norms(get_linear(model, n).weight) for n in names}
    hooks = [get_linear(model, n).register_forward_pre_hook(
        lambda mod, args, n=n: scores[n].append(channel_scores(args[0], norms[n], alpha).flatten()))
        for n in names]
    try:
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(4, model.config.vocab_size, (n, seq_len), generator=gen)
        model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    cut = {name: float(torch.quantile(torch.cat(scores[name]), sparsity)) for name in names}
    record = {"text": "random token ids (tests)", "tokens": n * seq_len, "seq_len": seq_len, "seed": seed}
    loaded = Loaded(model, loaded.tokenizer, loaded.source, blocks)
    return calibration.make_plan(loaded, uniform(names, sparsity, alpha), lambda name, s, a: cut[name], "wina",
                                 sparsity, record)


def run_cli(*args: str) -> int:
    """`wisparse ARGS` in this process; its exit code (0 when the command returns)."""
    from wisparse_export import cli

    old = sys.argv
    sys.argv = ["wisparse", *args]
    try:
        cli.main()
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.argv = old
    return 0


def write_plan(loaded: Loaded, path: Path, **kwargs) -> Path:
    save_plan(make_plan(loaded, **kwargs), path)
    return path


def graphs_match_pytorch(loaded: Loaded, plan: Plan, out: Path, seed: int, tol: float = 1e-4) -> None:
    """dense.onnx against the dense model and sparse.onnx against the model with the plan applied, one prefill step
    on random token ids: the largest logit difference at most `tol`."""
    ids = torch.randint(4, 260, (2, 24), generator=torch.Generator().manual_seed(seed))
    for role, p in (("dense", None), ("sparse", plan)):
        logits, _ = GraphSession(out / f"{role}.onnx").step(ids.numpy())
        if p is not None:
            apply(loaded.model, p)
        try:
            with torch.no_grad():
                ref = loaded.model(input_ids=ids, use_cache=False).logits.numpy()
        finally:
            remove(loaded.model)
        assert np.abs(logits - ref).max() <= tol, role
