"""Models spread by accelerate's device map (issue 17), exercised on CPU: some blocks kept on the CPU, some
offloaded to disk through accelerate's hooks (their parameters are empty meta tensors between forwards). Every
stage must give what the plain model gives; bad maps are refused in one line. On one GPU (`-m gpu`): cuda:0 and a
block offloaded to the CPU, the multi-device paths short of a second GPU."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from _plans import gpu, run_cli, save_tiny, tiny_model, tokenizer
from test_random_models import config_file, narrow, shipped
from test_search import TINY

from wisparse_export import bench, kernels, pipeline, random_models, search
from wisparse_export.calibration import collect
from wisparse_export.config import CalibrationConfig
from wisparse_export.data import Text, sequences
from wisparse_export.errors import WisparseError
from wisparse_export.evaluate import evaluate
from wisparse_export.models import Loaded, find_blocks, input_device, load_model, offloaded, stored
from wisparse_export.runtime import apply, sparse_linears

# Layer 1 offloaded to disk (execution on the CPU, the hooks' path), the rest kept where it is.
OFFLOAD = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
           "model.norm": "cpu", "lm_head": "cpu"}
# One GPU: everything on cuda:0 but layer 1, offloaded to the CPU (accelerate copies it to cuda:0 for each forward).
GPU_MAP = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0, "model.layers.1": "cpu",
           "model.norm": 0, "lm_head": 0}
TEXT = Text([f"document {d}: " + " ".join(f"word{d * 7 + i} item {i}." for i in range(40)) for d in range(12)],
            "tests:device-map")
CAL = replace(CalibrationConfig.preset(), seq_len=32, tokens=256, validation_tokens=64, batch_size=4)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("dm") / "tiny")


def test_random_model_on_a_device_map_has_the_single_device_weights(tmp_path):
    """random:CONFIG built module by module on the map's devices (then dispatched): the same seeded values as the
    one-device build, offloaded ones included, and the same logits."""
    config, _ = random_models.read_config(config_file(tmp_path, narrow(shipped("llama-3.1-8b"), vocab_size=512)))
    plain = random_models.build(config, torch.float32, "cpu", seed=3)
    mapped = random_models.build(config, torch.float32, "cpu", 3, OFFLOAD, str(tmp_path / "offload"))
    assert offloaded(mapped) and not offloaded(plain)
    for name, p in plain.named_parameters():
        module, _, attr = name.rpartition(".")
        assert torch.equal(stored(mapped.get_submodule(module), attr), p), name
    assert find_blocks(mapped) == find_blocks(plain)
    ids = torch.randint(0, 512, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(mapped(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_calibrate_and_evaluate_through_offload_hooks(tiny_folder, tmp_path):
    """The search, statistics (column norms of offloaded weights: 'Cannot copy out of meta tensor' before), refit
    and evaluation on a model with a block offloaded to disk: the plain model's plan and metrics."""
    plain = load_model(str(tiny_folder), device="cpu")
    mapped = load_model(str(tiny_folder), device_map=OFFLOAD, offload_folder=str(tmp_path / "offload"))
    assert offloaded(mapped.model) and input_device(mapped.model) == torch.device("cpu")
    plans = [pipeline.calibrate(m, TEXT, 0.5, CAL, search=TINY, progress=False) for m in (plain, mapped)]
    assert plans[0].method == "wisparse" and plans[0].search["trace"]
    assert plans[1].to_dict()["layers"] == plans[0].to_dict()["layers"]
    assert plans[1].model == plans[0].model  # the weight samples are read from the offloaded block too
    seqs = sequences(plain.tokenizer, TEXT, 32, 128)
    results = [evaluate(m.model, plans[0], seqs, progress=False) for m in (plain, mapped)]
    assert results[1] == results[0]
    with pytest.raises(WisparseError, match="not with a model spread by a device map"):
        pipeline.calibrate(mapped, TEXT, 0.5, CAL, search=TINY, progress=False, workers=2)


@pytest.mark.parametrize("spec, message", [
    ("balanced_low_1", "unknown device map 'balanced_low_1'"),
    ({"model.layers.0": "cuda:7"}, "does not exist here"),
    ({"model.layers.0": "gpu"}, "is not a GPU index"),
    ({"": "disk"}, "give an offload folder"),
    ({"model.layers.0": "cpu"}, "leaves tensors unplaced: model.embed_tokens.weight"),
    ({"": "cpu", "model.nothing": "cpu"}, "names modules the model does not have: model.nothing"),
    ({}, "must be a non-empty object"),
    ([], "is not a JSON object"),
])
def test_bad_device_maps_are_one_line_errors(tiny_folder, tmp_path, spec, message):
    if isinstance(spec, list):  # a JSON file that holds no map
        path = tmp_path / "map.json"
        path.write_text(json.dumps(spec))
        spec = str(path)
    with pytest.raises(WisparseError, match=message) as e:
        load_model(str(tiny_folder), device_map=spec)
    assert "\n" not in str(e.value)


def test_cli_device_map_from_json_and_not_with_device(tiny_folder, tmp_path, capsys):
    (tmp_path / "map.json").write_text(json.dumps({"": "cpu"}))
    plan = tmp_path / "plan.json"
    rc = run_cli("calibrate", "--model", str(tiny_folder), "--device-map", str(tmp_path / "map.json"), "--method",
                 "wina", "--sparsity", "0.5", "--calib-text", str(_text_file(tmp_path)), "--calib-tokens", "128",
                 "--seq-len", "32", "-o", str(plan), "--quiet")
    assert rc == 0 and json.loads(plan.read_text())["method"] == "wina"
    capsys.readouterr()
    rc = run_cli("evaluate", "--model", str(tiny_folder), "--plan", str(plan), "--device", "cpu", "--device-map",
                 "auto")
    assert rc == 2 and capsys.readouterr().err.strip() == "error: give --device or --device-map, not both"


def _text_file(folder):
    path = folder / "calib.txt"
    path.write_text("\n\n".join(TEXT.docs))
    return path


def test_parallel_search_equals_the_serial_one():
    """Two processes (gloo on CPU), each with its replica of the model, judge each generation's candidates: the
    allocation, the best levels and the trace (best KL, evaluations) are the serial search's."""
    model = tiny_model("llama")
    loaded = Loaded(model=model, tokenizer=tokenizer(), source="tiny-llama", blocks=find_blocks(model))
    seqs = torch.randint(4, 260, (8, 64), generator=torch.Generator().manual_seed(1))
    seqs[:, 0] = 1
    stats = collect(model, loaded.blocks, seqs, (1.0,), 4, progress=False)
    cfg = replace(TINY, generations=3, offspring=5, survivors=3)  # 5 children: an uneven deal over 2 processes
    runs = [search.allocate(loaded, stats, seqs, 0.5, cfg, progress=False, workers=w) for w in (1, 2)]
    (serial, one), (parallel, two) = runs
    assert parallel == serial
    assert two["blocks"] == one["blocks"] and two["fitness"] == one["fitness"]
    strip = [[{k: v for k, v in t.items() if k != "seconds"} for t in r["trace"]] for r in (one, two)]
    assert strip[1] == strip[0] and strip[0][-1]["evaluations"] > 0


@pytest.mark.gpu
@gpu
def test_cuda_and_cpu_map_calibrates_and_evaluates_like_the_gpu_model(tiny_folder):
    """cuda:0 with layer 1 offloaded to the CPU: the search, statistics (the offloaded block's column norms are
    computed where its weights are kept), refit and evaluation run; the plan covers the same linears with the same
    weight samples, and evaluating one plan on both models gives the same metrics."""
    plain = load_model(str(tiny_folder), device="cuda")
    mapped = load_model(str(tiny_folder), device_map=GPU_MAP)
    assert offloaded(mapped.model) and input_device(mapped.model) == torch.device("cuda", 0)
    plans = [pipeline.calibrate(m, TEXT, 0.5, CAL, search=TINY, progress=False) for m in (plain, mapped)]
    assert plans[1].layers.keys() == plans[0].layers.keys() and plans[1].model == plans[0].model
    for name, lp in plans[1].layers.items():
        assert lp.threshold == pytest.approx(plans[0].layers[name].threshold, rel=1e-2, abs=1e-6), name
    seqs = sequences(plain.tokenizer, TEXT, 32, 128)
    got, want = (evaluate(m.model, plans[0], seqs, progress=False) for m in (mapped, plain))
    assert got["ppl"] == pytest.approx(want["ppl"], rel=1e-4) and got["kl"] == pytest.approx(want["kl"], abs=1e-5)


@pytest.mark.gpu
@gpu
def test_apply_puts_the_kernels_on_the_gpu_blocks_only(tiny_folder, monkeypatch):
    """bf16 on cuda:0 with layer 1 offloaded: `apply` switches layer 0's linears to our kernels (q/k/v and gate/up
    fused) and leaves the offloaded block on the PyTorch mask path; a decode step's logits match the all-GPU
    model's under the same plan."""
    plain = load_model(str(tiny_folder), "bfloat16", "cuda")
    mapped = load_model(str(tiny_folder), "bfloat16", device_map=GPU_MAP)
    plan = bench.uniform_plan(plain.model, bench.activation_samples(plain.model), 0.5)
    for m in (plain.model, mapped.model):
        apply(m, plan)
    on = {n: lin.on_kernels for n, lin in sparse_linears(mapped.model).items()}
    assert all(on[n] for n in on if n.startswith("model.layers.0."))
    assert not any(on[n] for n in on if n.startswith("model.layers.1."))
    assert sparse_linears(mapped.model)["model.layers.0.mlp.gate_proj"].fused is not None
    calls = []
    orig = kernels.dispatch.sparse_linear_op
    monkeypatch.setattr(kernels.dispatch, "sparse_linear_op", lambda *a, **k: calls.append(1) or orig(*a, **k))
    ids = torch.randint(0, 260, (1, 1), device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    with torch.no_grad():
        want = plain.model(input_ids=ids).logits.double()
        calls.clear()
        got = mapped.model(input_ids=ids).logits.double()
    assert len(calls) == 4  # layer 0: q/k/v, o, gate/up, down; layer 1 none
    assert (got - want).norm() / want.norm() < 2e-2
