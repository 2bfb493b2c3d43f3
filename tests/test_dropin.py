"""The export folder opened as it is by the field's runtimes: Optimum's ORTModelForCausalLM (`file_name=`) and
onnxruntime-genai (genai_config.json; an overlay picks dense.onnx) generate PyTorch's greedy tokens from both
graphs; the folder's config, generation config and tokenizer are read by the transformers running the tests.

The runtimes are optional: their tests skip, with the reason, where the package is absent. tests/compat/run.sh runs
this file (and the whole suite) in an environment with the oldest transformers we declare, optimum-onnx and
onnxruntime-genai, exporting with the main environment's interpreter (WISPARSE_EXPORT_PYTHON): the folder written
under transformers 5 is read by the transformers 4.x that Optimum pins.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch
from _plans import run_cli, save_tiny, write_plan
from transformers import AutoTokenizer

from wisparse_export.manifest import owned, read_manifest
from wisparse_export.models import load_model
from wisparse_export.plan import load_plan
from wisparse_export.runtime import apply, remove

PROMPT = [1, 72, 101, 108, 108, 111, 44, 32]  # "<s>Hello, " in the tests' byte-level tokenizer
STEPS = 16
NO_OPTIMUM = "optimum-onnx is not installed (tests/compat/run.sh runs these tests with it)"
NO_GENAI = "onnxruntime-genai is not installed (pip install onnxruntime-genai)"


def export_cli(*args: str) -> None:
    """`wisparse export ARGS`, by WISPARSE_EXPORT_PYTHON where set (another environment), else in this process."""
    python = os.environ.get("WISPARSE_EXPORT_PYTHON")
    if python:
        subprocess.run([python, "-m", "wisparse_export", "export", *args], check=True)
    else:
        assert run_cli("export", *args) == 0


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """kind -> (Loaded, Plan, export folder), the folder written by `wisparse export`."""
    done = {}

    def get(kind: str):
        if kind not in done:
            root = tmp_path_factory.mktemp(kind)
            loaded = load_model(str(save_tiny(kind, root / "model")), "float32", "cpu", progress=False)
            plan = write_plan(loaded, root / "plan.json")
            export_cli("--model", str(root / "model"), "--plan", str(plan), "-o", str(root / "out"), "--quiet")
            done[kind] = (loaded, load_plan(plan), root / "out")
        return done[kind]

    return get


def torch_tokens(loaded, plan=None) -> list[int]:
    """PyTorch's greedy continuation of PROMPT: the dense model, or with `plan` applied."""
    if plan is not None:
        apply(loaded.model, plan)
    try:
        with torch.no_grad():
            out = loaded.model.generate(torch.tensor([PROMPT]), max_new_tokens=STEPS, min_new_tokens=STEPS,
                                        do_sample=False, pad_token_id=0)
    finally:
        remove(loaded.model)
    return out[0, len(PROMPT):].tolist()


@pytest.fixture(scope="module")
def reference(made):
    loaded, plan, _ = made("llama")
    ref = {"dense": torch_tokens(loaded), "sparse": torch_tokens(loaded, plan)}
    assert ref["dense"] != ref["sparse"]  # the tests below tell the two graphs apart
    return ref


@pytest.mark.parametrize("role", ["dense", "sparse"])
def test_optimum_generates_pytorch_tokens(made, reference, role):
    ort = pytest.importorskip("optimum.onnxruntime", reason=NO_OPTIMUM)
    _, _, out = made("llama")
    model = ort.ORTModelForCausalLM.from_pretrained(out, file_name=f"{role}.onnx", provider="CPUExecutionProvider")
    tokens = model.generate(torch.tensor([PROMPT]), max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False)
    assert tokens[0, len(PROMPT):].tolist() == reference[role]
    tok = AutoTokenizer.from_pretrained(out)  # the folder's own tokenizer, as a user calls it: no token_type_ids
    inputs = tok("Hello, wisparse!", return_tensors="pt")
    assert set(inputs) == {"input_ids", "attention_mask"}
    assert model.generate(**inputs, max_new_tokens=4, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 4


@pytest.mark.parametrize("role", ["dense", "sparse"])
def test_genai_generates_pytorch_tokens(made, reference, role):
    og = pytest.importorskip("onnxruntime_genai", reason=NO_GENAI)
    loaded, _, out = made("llama")
    config = og.Config(str(out))
    if role == "dense":  # genai_config.json names sparse.onnx; this is the documented switch
        config.overlay(json.dumps({"model": {"decoder": {"filename": "dense.onnx"}}}))
    model = og.Model(config)
    text = "Hello, wisparse!"  # genai's tokenizer skips the tests' BOS template (a tokenizer.json post-processor)
    assert list(og.Tokenizer(model).encode(text)) == loaded.tokenizer(text, add_special_tokens=False).input_ids
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(PROMPT) + STEPS, min_length=len(PROMPT) + STEPS, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(PROMPT)
    while not generator.is_done():
        generator.generate_next_token()
    assert list(generator.get_sequence(0))[len(PROMPT):] == reference[role]


def rope_of(config) -> tuple[float, float]:
    """Gemma3's (global, local) RoPE bases, in whichever spelling this transformers uses."""
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "full_attention" in rope:
        return rope["full_attention"]["rope_theta"], rope["sliding_attention"]["rope_theta"]
    return config.rope_theta, config.rope_local_base_freq


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_transformers_reads_the_folder(made, kind):
    """config.json, generation_config.json and the tokenizer at the root, as this transformers reads them."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    loaded, _, out = made(kind)
    text = "Hello, wisparse! ünïcode"
    assert AutoTokenizer.from_pretrained(out)(text).input_ids == loaded.tokenizer(text).input_ids
    config, want = AutoConfig.from_pretrained(out), loaded.model.config
    for key in ("model_type", "num_hidden_layers", "num_key_value_heads", "head_dim", "vocab_size"):
        assert getattr(config, key) == getattr(want, key), key
    assert GenerationConfig.from_pretrained(out).eos_token_id == loaded.model.generation_config.eos_token_id
    raw = json.loads((out / "config.json").read_text())
    assert raw["torch_dtype"] == raw["dtype"] == "float32" and raw["architectures"] == [loaded.architecture]
    if kind == "gemma3":  # transformers 4.x reads only these two keys; 5.x nests them per layer type
        assert (raw["rope_theta"], raw["rope_local_base_freq"]) == rope_of(want) == rope_of(config)
    else:
        assert raw["rope_theta"] == (getattr(want, "rope_parameters", None) or {}).get("rope_theta", getattr(
            want, "rope_theta", None))


def test_genai_config_describes_each_graph(made):
    loaded, _, out = made("llama")
    genai = json.loads((out / "genai_config.json").read_text())
    m = read_manifest(out)
    decoder = genai["model"]["decoder"]
    assert decoder["filename"] == m["files"]["sparse"] and genai["model"]["type"] == m["model"]["model_type"]
    assert (decoder["num_hidden_layers"], decoder["num_key_value_heads"], decoder["head_size"]) == (
        m["graph"]["layers"], m["graph"]["kv_heads"], m["graph"]["head_dim"])
    assert genai["model"]["eos_token_id"] == loaded.model.generation_config.eos_token_id
    assert genai["search"]["past_present_share_buffer"] is False  # present = past + new: never the same buffer


def test_manifest_names_every_file_and_reexport_replaces_them(made, tmp_path):
    _, _, first = made("llama")
    out = tmp_path / "out"
    shutil.copytree(first, out)
    m = read_manifest(out)
    assert owned(m) == {p.name for p in out.iterdir()}
    assert "tokenizer.json" in m["files"]["tokenizer"] and {"config.json", "genai_config.json"} <= owned(m)
    model, plan = first.parent / "model", first.parent / "plan.json"
    assert run_cli("export", "--model", str(model), "--plan", str(plan), "-o", str(out), "--dtype", "float16",
                   "--quiet") == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    assert owned(read_manifest(out)) == {p.name for p in out.iterdir()}


def _tokenizer_string(m):  # version 2's folder, not a list
    m["files"]["tokenizer"] = "tokenizer"


def _tokenizer_outside(m):
    m["files"]["tokenizer"] = ["../tokenizer.json"]


BAD_TOKENIZER = {"a folder name, not a list": (_tokenizer_string, None, "files.tokenizer must be a non-empty list"),
                 "a path outside OUT": (_tokenizer_outside, None, "plain file name"),
                 "a file missing": (None, "tokenizer.json", "tokenizer.json is missing"),
                 "a symbolic link": (None, "tokenizer_config.json", "symbolic link")}


@pytest.mark.parametrize("case", list(BAD_TOKENIZER))
def test_check_refuses_a_bad_tokenizer_entry(made, tmp_path, capsys, case):
    mutate, name, match = BAD_TOKENIZER[case]
    _, _, first = made("llama")
    out = tmp_path / "out"
    shutil.copytree(first, out)
    if mutate is not None:
        m = json.loads((out / "manifest.json").read_text())
        mutate(m)
        (out / "manifest.json").write_text(json.dumps(m))
    elif case == "a symbolic link":
        (out / name).unlink()
        (out / name).symlink_to(first / name)
    else:
        (out / name).unlink()
    capsys.readouterr()
    assert run_cli("check", str(out), "--tokens", "256", "--seq-len", "32", "--quiet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
