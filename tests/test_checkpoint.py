"""Sparse checkpoints: save_pretrained's folder plus the plan, loaded back sparse; refusals in one line."""

from __future__ import annotations

import json

import pytest
import torch
from _plans import make_plan, save_tiny, tokenizer

from wisparse_export import apply, checkpoint, load_model
from wisparse_export.errors import WisparseError
from wisparse_export.runtime import sparse_linears

IDS = torch.randint(4, 260, (2, 24), generator=torch.Generator().manual_seed(3))


@pytest.fixture
def applied(tmp_path):
    loaded = load_model(str(save_tiny("llama", tmp_path / "model")), "float32", "cpu")
    plan = make_plan(loaded, sparsity=0.5)
    with torch.no_grad():
        dense = loaded.model(input_ids=IDS).logits
    apply(loaded.model, plan)
    with torch.no_grad():
        sparse = loaded.model(input_ids=IDS).logits
    assert not torch.allclose(dense, sparse)
    return loaded, plan, dense, sparse


def test_save_and_load_round_trip(applied, tmp_path):
    loaded, plan, dense, sparse = applied
    out = checkpoint.save(loaded.model, plan, tmp_path / "ckpt", loaded.tokenizer)
    config = json.loads((out / "config.json").read_text())
    assert config["wisparse_plan"] == "wisparse_plan.json"
    again, plan2 = checkpoint.load(out, "float32", "cpu", progress=False)
    assert plan2.digest() == plan.digest() and len(sparse_linears(again.model)) == len(plan.layers)
    with torch.no_grad():
        assert torch.equal(again.model(input_ids=IDS).logits, sparse)
    plain = load_model(str(out), "float32", "cpu")  # any Hugging Face loader sees the dense model
    assert set(plain.model.state_dict()) == set(again.model.state_dict())
    with torch.no_grad():
        assert torch.equal(plain.model(input_ids=IDS).logits, dense)


def test_save_refuses_a_folder_with_files_and_touches_nothing(applied, tmp_path):
    loaded, plan, _, _ = applied
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.txt").write_text("mine")
    with pytest.raises(WisparseError, match="not an empty folder"):
        checkpoint.save(loaded.model, plan, tmp_path / "busy")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["thesis.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_load_refuses_weights_changed_after_the_plan(applied, tmp_path):
    loaded, plan, _, _ = applied
    out = checkpoint.save(loaded.model, plan, tmp_path / "ckpt", tokenizer())
    other = load_model(str(save_tiny("llama", tmp_path / "other", seed=1)), "float32", "cpu")
    other.model.save_pretrained(out)  # same shapes, other weights, the plan file left beside them
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "wisparse_plan": "wisparse_plan.json"}))
    with pytest.raises(WisparseError, match="weights differ"):
        checkpoint.load(out, "float32", "cpu", progress=False)


@pytest.mark.parametrize("value, match", [(None, "names no wisparse_plan"), ("../plan.json", "plain file name"),
                                          ("missing.json", "missing")])
def test_load_refuses_a_bad_plan_entry(applied, tmp_path, value, match):
    loaded, plan, _, _ = applied
    out = checkpoint.save(loaded.model, plan, tmp_path / "ckpt", tokenizer())
    config = json.loads((out / "config.json").read_text())
    config["wisparse_plan"] = value
    if value is None:
        del config["wisparse_plan"]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(WisparseError, match=match):
        checkpoint.load(out, "float32", "cpu", progress=False)
