"""Random-weight models of real shapes (`--model random:NAME`): shipped configs, seeded in-place init, tokenizer."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import pytest
import torch
from _plans import run_cli

from wisparse_export import identity, random_models
from wisparse_export.errors import WisparseError
from wisparse_export.models import default_gguf, load_model

# Published sizes (the model cards' parameter counts); a shipped config must land within 0.5%.
PUBLISHED = {"llama-3.1-8b": 8.03e9, "qwen2.5-7b": 7.62e9, "mistral-7b-v0.3": 7.25e9, "gemma-2-9b": 9.24e9,
             "llama-3.1-70b": 70.6e9, "llama-3.1-405b": 405.9e9, "smollm2-135m": 134.5e6}
TEXT = "Photosynthesis: Übermäßig komplizierte Zusammenhänge, 日本語のテキスト, emoji 🎉 and `def f(x): return x**2`."


def shipped(name: str) -> dict:
    """A shipped config as installed (package data of wisparse_export.recipes)."""
    return json.loads(importlib.resources.files("wisparse_export.recipes").joinpath(f"configs/{name}.json").read_text())


def config_file(folder: Path, values: dict) -> str:
    path = folder / "config.json"
    path.write_text(json.dumps(values))
    return str(path)


def narrow(values: dict, layers: int = 2, **over) -> dict:
    """The same architecture at a few layers, a small width and at most 49152 tokens (heads, kv heads and the rest
    kept): a few MB, built in a second."""
    heads = values["num_attention_heads"]
    return {**values, "num_hidden_layers": layers, "hidden_size": heads * max(1, 64 // heads), "head_dim": 16,
            "intermediate_size": 128, "vocab_size": min(values["vocab_size"], 49152), **over}


def test_every_shipped_config_has_a_published_size():
    assert random_models.names() == sorted(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_the_published_size(name):
    config, label = random_models.read_config(name)
    assert label == f"random:{name}"
    assert abs(random_models.parameter_count(config) / PUBLISHED[name] - 1) < 0.005


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_shipped_config_runs_at_reduced_size(name, tmp_path):
    """Each architecture builds at 2 layers and a small width and gives finite logits on the embedded tokenizer's
    ids, which all fall inside the vocabulary."""
    values = narrow(shipped(name))
    config, _ = random_models.read_config(config_file(tmp_path, values))
    assert config.architectures == values["architectures"]
    model = random_models.build(config, torch.float32, "cpu")
    tok = random_models.tokenizer(default_gguf(), values["vocab_size"])
    ids = torch.tensor([tok(TEXT)["input_ids"]])
    assert int(ids.max()) < values["vocab_size"] and tok.decode(ids[0]) == TEXT
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], values["vocab_size"]) and torch.isfinite(logits).all()
    assert logits[0, 0].std() > 0.1 and not torch.allclose(logits[0, 0], logits[0, -1])


def test_mistral_vocabulary_cuts_the_tokenizer():
    """Mistral-7B-v0.3 has 32768 tokens, fewer than SmolLM2's 49152: the tokenizer is cut to fit, still lossless."""
    full = random_models.tokenizer(default_gguf(), 49152)
    cut = random_models.tokenizer(default_gguf(), shipped("mistral-7b-v0.3")["vocab_size"])
    assert len(full) == 49152 and len(cut) == 32768
    assert max(full(TEXT)["input_ids"]) >= 32768 > max(cut(TEXT)["input_ids"])
    assert cut.decode(cut(TEXT)["input_ids"]) == TEXT and cut.bos_token == full.bos_token


def test_an_80_layer_model_in_bfloat16_keeps_a_real_spread(tmp_path):
    """Llama-3.1-70B's full depth in bfloat16 (narrow): finite logits, and the last block's activations still spread
    out (thresholds at any sparsity are well defined)."""
    values = narrow(shipped("llama-3.1-70b"), layers=80, hidden_size=128, intermediate_size=256, vocab_size=49152)
    config, _ = random_models.read_config(config_file(tmp_path, values))
    model = random_models.build(config, torch.bfloat16, "cpu")
    seen = {}
    model.model.layers[-1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].float().abs()))
    ids = torch.tensor([random_models.tokenizer(default_gguf(), 49152)(TEXT)["input_ids"]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    assert torch.isfinite(out.logits).all() and out.logits.float().std() > 0.1
    assert all(torch.isfinite(h).all() for h in out.hidden_states)
    q = torch.quantile(seen["x"].flatten(), torch.tensor([0.25, 0.5, 0.9]))
    assert 0 < q[0] < q[1] / 1.5 and q[2] > 2 * q[1]


def test_same_seed_same_weights_and_dtypes_round_the_same_values(tmp_path):
    config, _ = random_models.read_config(config_file(tmp_path, narrow(shipped("qwen2.5-7b"), vocab_size=512)))
    a = random_models.build(config, torch.float32, "cpu", seed=0).state_dict()
    b = random_models.build(config, torch.float32, "cpu", seed=0).state_dict()
    c = random_models.build(config, torch.float32, "cpu", seed=1).state_dict()
    h = random_models.build(config, torch.bfloat16, "cpu", seed=0).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    matrices = [k for k in a if a[k].dim() == 2]
    assert not any(torch.equal(a[k], c[k]) for k in matrices)
    assert all(torch.equal(a[k].to(torch.bfloat16), h[k]) for k in matrices)
    w = a["model.layers.0.mlp.down_proj.weight"]  # uniform, std 1/sqrt(fan in), no two matrices alike
    assert abs(float(w.std()) * w.shape[1] ** 0.5 - 1) < 0.05 and abs(float(w.mean())) < 0.01
    up = [a[f"model.layers.{i}.mlp.up_proj.weight"] for i in (0, 1)]
    assert not torch.equal(up[0], up[1])
    assert torch.equal(a["model.norm.weight"], torch.ones(56)) and not a["model.layers.0.self_attn.q_proj.bias"].any()


def test_gemma_norms_and_scales_get_their_own_init(tmp_path):
    """Gemma's norms multiply by (1 + w): their init is 0; the embedding scale and rotary tables are filled too."""
    config, _ = random_models.read_config(config_file(tmp_path, narrow(shipped("gemma-2-9b"), vocab_size=512)))
    model = random_models.build(config, torch.float32, "cpu")
    assert not model.model.norm.weight.any()
    assert float(model.model.embed_tokens.embed_scale) == pytest.approx(8.0)
    rotary = model.model.rotary_emb
    assert torch.allclose(rotary.inv_freq, 10000.0 ** -(torch.arange(0, 16, 2).float() / 16))
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as the config says


def test_load_model_random_path(tmp_path, capsys):
    """random:/path/config.json through load_model: a Loaded like any other, the embedded tokenizer, and a note."""
    path = config_file(tmp_path, narrow(shipped("smollm2-135m")))
    loaded = load_model(f"random:{path}", device="cpu")
    assert loaded.source == f"random:{Path(path).resolve()}" and loaded.architecture == "LlamaForCausalLM"
    assert random_models.NOTE in capsys.readouterr().err
    assert [len(g) for g in loaded.blocks[0].groups] == [3, 1, 2, 1] and len(loaded.blocks) == 2
    assert loaded.tokenizer.bos_token == "<|im_start|>" and len(loaded.tokenizer) == 49152
    assert loaded.tokenizer.convert_ids_to_tokens(loaded.tokenizer(" world")["input_ids"]) == ["Ġworld"]


def test_a_model_folder_stands_for_its_config(tmp_path):
    path = config_file(tmp_path, narrow(shipped("gemma-2-9b")))
    config, label = random_models.read_config(str(tmp_path))
    assert label == f"random:{Path(path).resolve()}" and config.model_type == "gemma2"


def test_old_bench_shape_names_are_aliases():
    assert random_models.read_config("llama3-8b")[1] == "random:llama-3.1-8b"
    assert random_models.read_config("smollm2-135m")[1] == "random:smollm2-135m"


@pytest.mark.parametrize("values, message", [
    ({}, "model_type None is not a model type"),
    ({"model_type": "no-such-model"}, "model_type 'no-such-model' is not a model type"),
    ({"model_type": "t5"}, "not a causal language model"),
    ({"model_type": "llama", "rope_scaling": 3}, "bad config: Field 'rope_parameters' with value 3"),
    ({"model_type": "llama", "hidden_size": 100}, "bad config: The hidden size .100. is not a multiple"),
    ({"model_type": "llama", "intermediate_size": -5}, "cannot build a model from this config: .* negative"),
    ({"model_type": "llama", "hidden_act": "nope"}, "cannot build a model from this config: unknown name 'nope'"),
])
def test_bad_configs_are_one_line_errors(tmp_path, values, message):
    with pytest.raises(WisparseError, match=message) as e:
        random_models.build(random_models.read_config(config_file(tmp_path, values))[0], torch.float32, "meta")
    assert "\n" not in str(e.value)


def test_a_vocabulary_below_the_tokenizer_bytes_is_refused():
    with pytest.raises(WisparseError, match="vocab_size 100 is below the embedded tokenizer's 252"):
        random_models.tokenizer(default_gguf(), 100)


@pytest.mark.parametrize("model", ["random:no-such-model", "random:/no/such/config.json", "random:{tmp}/bad.json",
                                   "random:{tmp}/t5.json"])
def test_cli_bad_random_models_exit_2(tmp_path, capsys, model):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "t5.json").write_text('{"model_type": "t5"}')
    code = run_cli("calibrate", "--model", model.format(tmp=tmp_path), "--sparsity", "0.5", "--device", "cpu",
                   "-o", str(tmp_path / "plan.json"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err
    assert not (tmp_path / "plan.json").exists()


def test_cli_help_names_every_shipped_config(capsys):
    run_cli("calibrate", "--help")
    out = " ".join(capsys.readouterr().out.split())
    assert all(name in out for name in random_models.names())


def test_cli_bench_shape_is_model_random(tmp_path, capsys):
    assert run_cli("bench", "--shape", "smollm2-135m", "--model", "x", "--device", "cpu") == 2
    assert "not both" in capsys.readouterr().err
    assert run_cli("bench", "--shape", "no-such-shape", "--device", "cpu") == 2
    assert "unknown random model 'no-such-shape'" in capsys.readouterr().err
    path = config_file(tmp_path, narrow(shipped("llama-3.1-8b"), vocab_size=49152))
    out = tmp_path / "b.json"
    assert run_cli("bench", "--model", f"random:{path}", "--device", "cpu", "--steps", "2", "--no-graphs",
                   "--sparsity", "0.5", "--quiet", "--json", str(out)) == 0
    result = json.loads(out.read_text())
    assert result["model"].startswith("random:") and result["sparse"][0]["target"] == 0.5


def test_cli_calibrate_plan_names_the_random_model(tmp_path):
    """A plan made on random weights says so in its model source."""
    path = config_file(tmp_path, narrow(shipped("smollm2-135m")))
    plan = tmp_path / "plan.json"
    assert run_cli("calibrate", "--model", f"random:{path}", "--sparsity", "0.5", "--method", "teal", "--device",
                   "cpu", "--calib-tokens", "256", "--seq-len", "32", "--quiet", "-o", str(plan)) == 0
    assert json.loads(plan.read_text())["model"]["source"] == f"random:{Path(path).resolve()}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_same_weights_on_every_device(tmp_path):
    """Built on the GPU in bfloat16, the weights are the CPU float32 ones rounded: a GPU plan names a CPU export."""
    config, _ = random_models.read_config(config_file(tmp_path, narrow(shipped("llama-3.1-8b"), vocab_size=4096)))
    cpu = random_models.build(config, torch.float32, "cpu").state_dict()
    gpu = random_models.build(config, torch.bfloat16, "cuda").state_dict()
    for k, w in cpu.items():
        if w.dim() == 2:
            assert torch.equal(w.to(torch.bfloat16), gpu[k].cpu()), k
            assert identity.same_values(identity.weight_sample(w), identity.weight_sample(gpu[k]))
