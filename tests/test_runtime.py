"""The runtime keeps nn.Linear: same modules, same parameter names, checkpoints that reload as the dense model.

The kernel layout ([in, out] storage, `.weight` a transposed view, fused groups sharing one storage) is built on
CPU here by letting `to_kernels` accept CPU bfloat16 weights and skip loading kernels: the conversion is device
independent, only the launches are not (tests/test_kernels.py runs those on a GPU).
"""

from __future__ import annotations

import pytest
import torch
from _plans import make_plan, tiny_model
from torch import nn
from transformers import AutoModelForCausalLM

from wisparse_export import kernels
from wisparse_export.errors import WisparseError
from wisparse_export.models import Loaded, find_blocks, fingerprint
from wisparse_export.runtime import SparseLinear, apply, remove, sparse_linears, to_kernels

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 64]])


def _model(kind="llama", seed=0, dtype=torch.float32):
    return tiny_model(kind, seed).to(dtype)


def _plan(model):
    return make_plan(Loaded(model, None, "tiny", find_blocks(model)))


@torch.no_grad()
def _logits(model):
    return model(input_ids=IDS).logits


@pytest.fixture
def cpu_kernels(monkeypatch):
    """`to_kernels` converts CPU bfloat16 linears (the layout and fusion) without compiling or loading kernels."""
    monkeypatch.setattr(kernels, "supports", lambda w, fmt=None: w.dtype == torch.bfloat16)
    monkeypatch.setattr(kernels, "preload", lambda layers: list(layers))


def _storage_alone(t):
    return t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.nbytes


@pytest.mark.parametrize("kind", ["llama", "qwen2"])  # qwen2: q/k/v with bias, a tied head
def test_apply_keeps_modules_parameters_and_state_dict_keys(kind):
    model = _model(kind)
    plan = _plan(model)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    fp = fingerprint(model)
    apply(model, plan)
    assert set(sparse_linears(model)) == set(plan.layers)
    assert dict(model.named_modules()) == modules and dict(model.named_parameters()) == params  # same objects
    sd = model.state_dict()
    assert list(sd) == list(dense) and all(torch.equal(sd[k], dense[k]) for k in dense)
    assert fingerprint(model) == fp


def test_save_pretrained_reloads_as_the_dense_model(tmp_path):
    """An applied model's checkpoint holds the dense model's keys and tensors; the plan applied again to the reloaded
    model gives the very same logits."""
    model = _model()
    plan = _plan(model)
    apply(model, plan)
    want = _logits(model)
    model.save_pretrained(tmp_path)
    back, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert list(back.state_dict()) == list(model.state_dict())
    assert not sparse_linears(back)
    apply(back.eval(), plan)
    assert torch.equal(_logits(back), want)


def test_remove_restores_plain_linears_and_identical_logits():
    model = _model()
    want = _logits(model)
    apply(model, _plan(model))
    assert not torch.equal(_logits(model), want)
    remove(model)
    assert torch.equal(_logits(model), want)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            assert type(m) is nn.Linear and not m._buffers and "tau" not in vars(m) and "threshold" not in vars(m)


def _reload(model, folder):
    model.save_pretrained(folder)
    back, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, dtype=torch.bfloat16)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return back.eval()


def test_kernel_layout_state_dict_and_remove(cpu_kernels, tmp_path):
    """On the kernels every weight is a view of [in, out] storage (a fused group's members share one), yet
    state_dict() and save_pretrained give the dense model's contiguous [out, in] tensors; remove restores them."""
    model = _model(dtype=torch.bfloat16)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    want_dense = _logits(model)
    plan = _plan(model)
    want_sparse = _logits(apply(_reload(model, tmp_path / "dense"), plan))  # reloaded: bfloat16 rotary tables differ
    apply(model, plan)
    mods = sparse_linears(model)
    assert all(m.on_kernels and m.weight.t().stride(1) == 1 for m in mods.values())
    assert {len(m.fused.members) for m in mods.values() if m.fused is not None} == {2, 3}  # gate/up, q/k/v
    q, k = mods["model.layers.0.self_attn.q_proj"], mods["model.layers.0.self_attn.k_proj"]
    assert q.weight.untyped_storage().data_ptr() == k.weight.untyped_storage().data_ptr()
    sd = model.state_dict()
    assert list(sd) == list(dense) and all(torch.equal(sd[k], dense[k]) and _storage_alone(sd[k]) for k in dense)
    back = _reload(model, tmp_path / "sparse")
    assert all(torch.equal(v, dense[k]) for k, v in back.state_dict().items())
    remove(apply(back, plan))  # the reloaded weights take the kernel layout and give it back, bit for bit
    assert torch.equal(_logits(apply(back, plan, kernels=False)), want_sparse)
    remove(model)
    assert all(_storage_alone(p) for p in model.parameters())
    assert torch.equal(_logits(model), want_dense)


def test_fused_members_share_the_group_tensors(cpu_kernels):
    """A member's weight, bias and tau are views of its group's; re-thresholding a member reaches the group."""
    model = _model("qwen2", dtype=torch.bfloat16)
    apply(model, _plan(model), check=False)
    mods = sparse_linears(model)
    names = [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
    fused = mods[names[0]].fused
    assert fused is not None and fused.members == [mods[n] for n in names] and fused.bias is not None
    for p, n in enumerate(names):
        col = sum(fused.splits[:p])
        assert mods[n].weight.data_ptr() == fused.wt[:, col:].data_ptr() and mods[n].index == p
        assert mods[n].bias.data_ptr() == fused.bias[col:].data_ptr()
        assert mods[n].tau.data_ptr() == fused.tau[p].data_ptr()
    mods[names[1]].set(9.0, 0.0)
    assert torch.all(fused.tau[1] == 9.0)


def test_load_state_dict_into_an_applied_model_refreshes_tau():
    """tau comes from the weights' column norms: weights loaded into an applied model bring their own."""
    other = _model(seed=1)
    plan = _plan(other)
    want = _logits(apply(_model(seed=1), plan))
    model = apply(_model(seed=0), plan, check=False)
    model.load_state_dict(other.state_dict())
    assert torch.equal(_logits(model), want)


def test_assigning_weights_on_the_kernels_is_refused(cpu_kernels):
    """load_state_dict(assign=True) would replace the kernel layout's views with loose tensors the fused launches
    never read: refused in one line (a plain load copies into the views and works)."""
    model = _model(dtype=torch.bfloat16)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    apply(model, _plan(model))
    model.load_state_dict(sd)
    with pytest.raises(WisparseError, match="remove\\(model\\) first"):
        model.load_state_dict(sd, assign=True)


def test_only_a_plain_linear_is_converted():
    class Custom(nn.Linear):
        pass

    with pytest.raises(WisparseError, match="cannot sparsify a Custom"):
        SparseLinear.convert(Custom(8, 8), 0.1, 1.0)


def test_to_kernels_fuses_the_groups_the_model_map_finds(cpu_kernels):
    """Without groups (a plan that has none), to_kernels fuses q/k/v and gate/up as `models.find_blocks` groups them."""
    model = _model(dtype=torch.bfloat16)
    plan = _plan(model)
    plan.groups = []
    apply(model, plan, check=False, kernels=False)
    to_kernels(model)
    short = {id(m): n.rsplit(".", 1)[-1] for n, m in sparse_linears(model).items()}
    groups = {tuple(short[id(x)] for x in m.fused.members) for m in sparse_linears(model).values() if m.fused}
    assert groups == {("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")}
